"""A sweep's recipe: its schema (:class:`SweepConfig`), the strict YAML loader
(:class:`RecipeLoader`: a key given twice or a YAML error names its file and line;
``include:`` merges other recipes), its checks, its grid of cells (:class:`Cell`),
and where its results go by default (:func:`default_out`). See
``probe.experiments.sweep`` for what a recipe says."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from probe.errors import ProbeError
from probe.tasks.templates import MAX_SAMPLES

# n* = the smallest n whose mean metric is at most this (the paper's threshold);
# the default of a recipe's `threshold:` and of `probe report --threshold`.
THRESHOLD = 0.05


@dataclass
class SweepConfig:
    """One experiment: a task, variants, sample sizes and seeds (a recipe file's contents)."""

    name: str = field(metadata={"help": "recipe name; results go to results/<name>/ by default"})
    task: str = field(metadata={"help": "catalogue task name (see `probe tasks`)"})
    n: list[int] = field(metadata={"help": "training sample sizes (= train alphabet sizes)"})
    variants: dict[str, dict[str, Any]] = field(
        metadata={
            "help": "label -> FinetuneConfig overrides (plus `task_params`), e.g. kq: {ab: kq}"
        }
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds per cell"})
    task_params: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "parameters of the task, e.g. {k: 5}"}
    )
    finetune: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "FinetuneConfig overrides shared by every variant"},
    )
    baseline: str | None = field(
        default="none",
        metadata={"help": "variant the report's n* ratios are relative to (null: none)"},
    )
    threshold: float = field(
        default=THRESHOLD, metadata={"help": "n* = smallest n whose mean metric is <= threshold"}
    )
    description: str = field(default="", metadata={"help": "one line on what the recipe shows"})
    launcher: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "where units run (probe.experiments.launchers.LauncherSpec), e.g. "
            "{kind: slurm, partition: gpu, time: 120}; probe sweep's flags win"
        },
    )

    def __post_init__(self) -> None:
        _check_config(self)

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "the recipe") -> SweepConfig:
        """Build from a recipe's (merged) mapping; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"{source} has unknown key(s) {unknown}; accepted keys: "
                f"{sorted(known | {'include'})}"
            )
        missing = [k for k in ("name", "task", "n", "variants") if k not in d]
        if missing:
            raise ValueError(
                f"{source} lacks {missing}; a recipe needs at least task, n and variants "
                f"(name defaults to the file name)"
            )
        return cls(**dict(d))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> SweepConfig:
        """Read a recipe, resolving ``include:`` chains; ``name`` defaults to the file stem."""
        path = Path(path)
        d = load_recipe(path)
        d.setdefault("name", path.stem)
        return cls.from_dict(d, source=f"recipe {str(path)!r}")

    # -- the grid ----------------------------------------------------------------

    def cells(self) -> list[Cell]:
        """Every cell in grid order: variants as listed, then n ascending, then seeds."""
        return [
            Cell(variant=v, n=n, seed=s, variant_index=i)
            for i, v in enumerate(self.variants)
            for n in sorted(self.n)
            for s in self.seeds
        ]

    def cell_settings(self, cell: Cell) -> dict[str, Any]:
        """The FinetuneConfig keyword arguments of one cell (without where it is stored):
        the recipe's shared ``finetune`` settings, then the variant's; ``task_params`` and
        ``model_overrides`` merge key by key (a variant's ``{readout: cls}`` keeps a shared
        ``{init: gpt2}``)."""
        overrides = dict(self.variants[cell.variant])
        params = {
            **self.finetune.get("task_params", {}),
            **self.task_params,
            **overrides.pop("task_params", {}),
        }
        model_overrides = {
            **self.finetune.get("model_overrides", {}),
            **overrides.pop("model_overrides", {}),
        }
        settings = {"task": self.task, **self.finetune, **overrides}
        if params:
            settings["task_params"] = params
        if model_overrides:
            settings["model_overrides"] = model_overrides
        settings["n_train"] = cell.n
        settings["seed"] = cell.seed
        return settings


@dataclass(frozen=True)
class Cell:
    """One run of the grid."""

    variant: str
    n: int
    seed: int
    variant_index: int = 0

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.variant, self.n, self.seed)

    def dirname(self) -> str:
        return f"{self.variant.replace(',', '+')}/n{self.n}-seed{self.seed}"


# Recipe keys an including file replaces whole: a recipe that includes another
# to change its variants wants exactly the variants it lists.
REPLACED_KEYS = ("variants",)


def _merge(
    base: Mapping[str, Any], over: Mapping[str, Any], replaced: Iterable[str] = ()
) -> dict[str, Any]:
    """Mappings merge key by key (recursively) except ``replaced`` keys; lists and
    scalars from ``over`` replace."""
    out = dict(base)
    for k, v in over.items():
        if k not in replaced and isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


class RecipeLoader(yaml.SafeLoader):
    """YAML's safe loader, stricter where a recipe could silently mean something else:
    a key given twice in one mapping is an error naming the key and both lines
    (otherwise the last one wins: two variants named ``kq``), and a number in
    exponent form that YAML 1.1 reads as a string (``1e-3``, ``1.5e3``: no dot, or
    no sign in the exponent) is a float."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: the base class says so
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key]}); each key may appear "
                    f"once in a mapping — rename or remove one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _read_yaml(path: Path) -> Any:
    """One YAML file through :class:`RecipeLoader`; a syntax error or a duplicate key
    becomes a one-line ``ValueError`` naming the file and line."""
    try:
        with open(path) as f:
            return yaml.load(f, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        raise ValueError(
            f"recipe {where}: {problem}; fix the YAML at that line (indentation, a missing "
            f"':' or an unclosed bracket or quote)"
            if "duplicate key" not in problem
            else f"recipe {where}: {problem}"
        ) from None
    except yaml.YAMLError as e:
        raise ValueError(f"recipe {path}: not valid YAML ({' '.join(str(e).split())})") from None


def load_recipe(
    path: str | os.PathLike, _seen: tuple[Path, ...] = (), _include: str | None = None
) -> dict[str, Any]:
    """A recipe's mapping with its ``include:`` files merged underneath it (each path
    relative to the recipe that includes it)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ValueError(f"recipe include cycle: {chain}; remove one of the includes")
    if not path.is_file():
        if _seen:  # an include: name it, the recipe holding it, and where it was looked for
            raise FileNotFoundError(
                f"recipe {str(_seen[-1])!r}: its include {_include!r} does not exist as "
                f"{str(path)!r} (an include is read relative to the recipe holding it; "
                "copy the included file next to it, or give its path from there)"
            )
        raise FileNotFoundError(
            f"recipe {str(path)!r} does not exist; the committed recipes live in recipes/ "
            "of the clone: run from its root, or pass the recipe's full path"
        )
    d = _read_yaml(path)
    if not isinstance(d, dict):
        raise ValueError(f"recipe {str(path)!r} is not a YAML mapping of keys to values")
    includes = d.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ProbeError(
            f"recipe {str(path)!r}: include: {includes!r} must be a file name or a list of "
            "them, relative to the recipe, e.g. include: base.yaml"
        )
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = _merge(merged, load_recipe(path.parent / inc, (*_seen, path), str(inc)))
    merged.pop("name", None)  # a name never comes from an included file
    return _merge(merged, d, REPLACED_KEYS)


def _finetune_fields() -> dict[str, dataclasses.Field]:
    from probe.train.config import FinetuneConfig

    return {f.name: f for f in dataclasses.fields(FinetuneConfig)}


def _check_overrides(where: str, overrides: Any, known: Iterable[str]) -> None:
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"{where} must be a mapping of FinetuneConfig fields to values, got {overrides!r}"
        )
    from probe.train.config import grid_fields

    grid_set = grid_fields()
    grid = sorted(set(overrides) & set(grid_set))
    if grid:
        hints = ", ".join(f"{k} (set by {grid_set[k]})" for k in grid)
        raise ValueError(f"{where} sets {hints}; the sweep sets these for each cell")
    if "push_to_hub" in overrides:
        raise ValueError(
            f"{where} sets push_to_hub: every cell would push its model to that one "
            f"repository; push the sweep's results instead (`probe report RESULTS --out DIR "
            f"--push-to-hub REPO_ID`), or one run with `probe finetune --push-to-hub`"
        )
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        accepted = sorted(set(known) - set(grid_set) - {"push_to_hub"})
        raise ValueError(f"{where} has unknown key(s) {unknown}; accepted keys: {accepted}")


# A variant name is a folder name under --work-dir: nothing that leaves it.
_SAFE_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.,+=-]*")


def _check_config(cfg: SweepConfig) -> None:
    if not isinstance(cfg.name, str) or not cfg.name or "/" in cfg.name:
        raise ValueError(f"recipe name {cfg.name!r} must be a non-empty string without '/'")
    if not isinstance(cfg.task, str) or not cfg.task:
        raise ValueError(f"task {cfg.task!r} must be a catalogue name (see `probe tasks`)")
    ns = cfg.n if isinstance(cfg.n, list) else [cfg.n]
    if not ns or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in ns):
        raise ValueError(f"n={cfg.n!r} must be a list of positive integers, e.g. [16, 64, 256]")
    if too_big := [x for x in ns if x > MAX_SAMPLES]:
        raise ProbeError(
            f"n={cfg.n!r}: {too_big[0]} is more samples than one split can hold (at most "
            f"{MAX_SAMPLES}); list smaller sample sizes"
        )
    if len(set(ns)) != len(ns):
        raise ValueError(f"n={cfg.n!r} repeats a value; list each sample size once")
    cfg.n = ns
    seeds = cfg.seeds if isinstance(cfg.seeds, list) else [cfg.seeds]
    if not seeds or any(not isinstance(s, int) or isinstance(s, bool) for s in seeds):
        raise ValueError(f"seeds={cfg.seeds!r} must be a list of integers, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={cfg.seeds!r} repeats a value")
    cfg.seeds = seeds
    if not isinstance(cfg.variants, Mapping) or not cfg.variants:
        raise ValueError(
            f"variants={cfg.variants!r} must map labels to overrides, e.g. "
            f"{{none: {{ab: none}}, kq: {{ab: kq}}}}"
        )
    for label, overrides in cfg.variants.items():
        if overrides is not None and not isinstance(overrides, Mapping):
            raise ProbeError(
                f"variant {label!r}: {overrides!r} must be a mapping of settings to values, "
                f"e.g. {label}: {{ab: kq}}"
            )
    cfg.variants = {str(k): dict(v or {}) for k, v in cfg.variants.items()}
    folders: dict[str, str] = {}
    for label in cfg.variants:
        if not _SAFE_NAME.fullmatch(label) or len(label) > 100:
            raise ProbeError(
                f"variant name {label!r} is not a safe folder name: use letters, digits and "
                "_ . , + = - (not first: . , = -), at most 100 characters, e.g. kq_rot"
            )
        folder = Cell(label, 0, 0).dirname().split("/")[0]
        if folder in folders:
            raise ProbeError(
                f"variants {folders[folder]!r} and {label!r} would share the folder "
                f"{folder!r} (a comma is written +); rename one of them"
            )
        folders[folder] = label
    if cfg.description is None:
        cfg.description = ""
    if not isinstance(cfg.description, str):
        raise ProbeError(
            f"description={cfg.description!r} must be one line of text; quote it if it "
            "holds commas or brackets"
        )
    if not isinstance(cfg.task_params, Mapping):
        raise ValueError(f"task_params={cfg.task_params!r} must be a mapping, e.g. {{k: 5}}")
    if cfg.baseline is not None and cfg.baseline not in cfg.variants:
        raise ValueError(
            f"baseline {cfg.baseline!r} is not a variant; pick one of {list(cfg.variants)} "
            f"or set `baseline: null`"
        )
    if not isinstance(cfg.threshold, (int, float)) or cfg.threshold <= 0:
        raise ValueError(f"threshold={cfg.threshold!r} must be a positive number, e.g. {THRESHOLD}")
    known = _finetune_fields()
    _check_overrides("finetune:", cfg.finetune, known)
    for label, overrides in cfg.variants.items():
        _check_overrides(f"variant {label!r}", overrides, known)
        if not isinstance(overrides.get("task_params", {}), Mapping):
            raise ValueError(f"variant {label!r}: task_params must be a mapping, e.g. {{k: 5}}")


def parse_variants(text: str, known: Iterable[str]) -> list[str]:
    """``--variants A,B``: the names, comma-separated. A recipe's own names may hold
    commas (``kq,vo``): at each place the longest run of parts that names a variant is
    one name; a part that names none stays alone (``select_cells`` refuses it)."""
    known = set(known)
    parts = [p.strip() for p in text.split(",")]
    names, i = [], 0
    while i < len(parts):
        j = next((j for j in range(len(parts), i, -1) if ",".join(parts[i:j]) in known), i + 1)
        names.append(",".join(parts[i:j]))
        i = j
    return [n for n in names if n]


def default_out(recipe: str | os.PathLike, config: SweepConfig) -> Path:
    """``results/<recipe name>``, or for a recipe in a subfolder of a ``recipes/`` folder
    that subfolder too: ``recipes/paper/copy.yaml`` -> ``results/paper/copy`` (so it
    never lands in ``results/copy``, the folder of ``recipes/copy.yaml``)."""
    path = Path(recipe).resolve()
    parents = [p.name for p in path.parents]
    if "recipes" in parents:
        sub = path.parent.relative_to(path.parents[parents.index("recipes")])
        return Path("results") / sub / config.name
    return Path("results") / config.name


def default_work_dir(recipe: str | os.PathLike, config: SweepConfig) -> Path:
    """``runs/sweep/<recipe name>``, with the recipe's subfolder as :func:`default_out`
    (``recipes/paper/copy.yaml`` -> ``runs/sweep/paper/copy``)."""
    return Path("runs") / "sweep" / default_out(recipe, config).relative_to("results")


def committed_out(recipe: str | os.PathLike, config: SweepConfig) -> Path | None:
    """The recipe's committed results in its clone (``ROOT/results/...`` for a recipe
    under ``ROOT/recipes/``), wherever the command runs; None for a recipe elsewhere."""
    path = Path(recipe).resolve()
    parents = [p.name for p in path.parents]
    if "recipes" not in parents:
        return None
    return path.parents[parents.index("recipes")].parent / default_out(path, config)
