"""Recipes -> grids of finetune runs, one JSON line per cell.

A *recipe* is a short YAML file naming a task, the *variants* (each a label and
a few :class:`~probe.train.run.FinetuneConfig` overrides: ``ab: kq``,
``model: mlp``, ``n_embd: 256``, ...), the sample sizes ``n`` (training samples,
= the train alphabet size) and the seeds. The grid is variant x n x seed; every
cell runs through :func:`probe.train.run.finetune` and its row, with the cell's
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

Two ways to run cells at once:

- ``--jobs N`` on one machine: N cells at a time, each in its own process
  (forked from a fork server that imported torch once) with one torch thread (``--jobs 0``: one per core); the parent appends
  each row as its cell finishes and shows one bar (cells done / total, failures,
  elapsed, remaining). The rows are those of ``--jobs 1`` run with one thread
  (``OMP_NUM_THREADS=1``), in the order the cells finish. Ctrl-C stops every
  worker; the finished cells' rows are kept and ``--resume`` runs the rest.
- ``--shard i/N`` over machines (a cluster's job array): each shard writes its
  own file, so shards may run at once into one folder (and each may use
  ``--jobs``).

What cannot go wrong mid-sweep is refused before the first cell: the recipe
(read by :class:`RecipeLoader`: a YAML error or a key given twice names its
file and line; ``1e-3`` is a number), every cell's configuration as ``probe
finetune`` would check it (:func:`cell_configs`; ``--dry-run`` checks the same),
and the ``--out`` / ``--work-dir`` folders (a file, or not writable). One sweep
holds a results file at a time (an OS lock on ``.results*.jsonl.lock`` next to
it, released when the process dies): a second is refused, naming the holder's
pid. A cell that raises (``FloatingPointError``: the loss diverged; any other
error: a bad dataset, a model that cannot be built) does not stop the sweep: its
row has ``status: diverged`` or ``failed`` and a one-line ``error`` (other rows
have ``status: ok``; older rows without one count as ok), the closing line
counts the failures, ``probe report`` lists them apart, and ``--resume`` counts
them as done unless ``--retry-failed``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from probe import preempt
from probe.checks import did_you_mean, is_int
from probe.errors import EXIT_PREEMPTED, InUse, Preempted, ProbeError, error_row, one_line_errors
from probe.files import code_tree, code_version, uncommitted_code
from probe.jsonl import append_row, json_default, read_rows
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


# -- results files -----------------------------------------------------------------


FOLDER_LOCK = ".sweep.lock"


@contextlib.contextmanager
def results_folder_lock(out: Path, shard: tuple[int, int] | None) -> Iterator[None]:
    """The results folder's lock, beside each results file's own: a sweep of the whole
    grid (which may delete or merge every file with ``--overwrite``) holds it alone;
    shards share it, but only shards of one N (shards of another N, or a whole sweep,
    would run the same cells into other files). A refusal names a holder's pid."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    held: list[int] = []

    def take(name: str, mode: int, what: str) -> None:
        fd = os.open(out / name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InUse(
                f"--out {str(out)!r} is in use by {what} (pid {holder}); wait for it to "
                "finish, or pass another --out"
            ) from None
        held.append(fd)
        if mode == fcntl.LOCK_EX or not os.fstat(fd).st_size:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    try:
        if shard is None:
            take(FOLDER_LOCK, fcntl.LOCK_EX, "another sweep or shard")
        else:
            take(FOLDER_LOCK, fcntl.LOCK_SH, "a sweep of the whole grid")
            n = shard[1]
            take(f".shards-of-{n}.lock", fcntl.LOCK_SH, "shards")
            for other in out.glob(".shards-of-*.lock"):
                if other.name == f".shards-of-{n}.lock":
                    continue
                fd = os.open(other, os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    raise InUse(
                        f"--out {str(out)!r} is in use by shards of another count "
                        f"({other.name[len('.shards-of-') : -len('.lock')]}, pid {holder}); "
                        f"--shard i/{n} would run their cells again; use their count, or "
                        "pass another --out"
                    ) from None
                finally:
                    os.close(fd)  # free: released at once
        yield
    finally:
        for fd in held:
            os.close(fd)


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


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short hash of what a cell computes, to catch a recipe (or a FinetuneConfig
    default) changed between runs."""
    from probe.train.config import hashed_settings

    text = json.dumps(hashed_settings(dict(settings)), sort_keys=True, default=json_default)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


# -- running -----------------------------------------------------------------------


def _code_version() -> str:
    """probe's version and, in a git checkout, the commit (``-dirty`` with local edits to
    ``probe/``: :func:`uncommitted_code`; results files being written elsewhere in the
    checkout, another sweep's say, are not the code)."""
    return code_version(dirty=bool(uncommitted_code()))


def cell_plans(
    config: SweepConfig, cells: Iterable[Cell], work_dir: str | os.PathLike
) -> dict[tuple[str, int, int], Any]:
    """Each cell's :class:`probe.train.plan.RunPlan`, keyed by ``cell.key``, checked as
    ``probe finetune`` would check it before its first step (``FinetuneConfig`` itself,
    then :func:`probe.train.plan.check_environment`: the task and its parameters, the
    model name, ``ab`` on an MLP, trackers), except the cell's output folder. A
    variant's names are resolved once: its cells differ only in n, seed and folder. The
    first bad cell is a ``ValueError`` naming it."""
    from probe.train.config import FinetuneConfig
    from probe.train.plan import check_environment

    plans = {}
    planned: dict[str, Any] = {}
    for c in cells:
        kwargs = dict(config.cell_settings(c), output_dir=str(Path(work_dir) / c.dirname()))
        # A cell without a row never finished: start it over. One bar over cells,
        # not one per run.
        kwargs.update(overwrite=True, progress=False)
        try:
            cfg = FinetuneConfig(**kwargs)
            # n and seed change nothing check_environment judges: once per variant
            rest = {k: v for k, v in kwargs.items() if k not in ("n_train", "seed", "output_dir")}
            key = json.dumps(rest, sort_keys=True, default=repr)
            if key not in planned:
                planned[key] = check_environment(cfg, None)
        except (TypeError, ValueError, OSError) as e:
            raise ValueError(f"cell {c.key} of recipe {config.name!r}: {e}") from e
        plans[c.key] = planned[key].with_config(cfg)
    return plans


def cell_configs(
    config: SweepConfig, cells: Iterable[Cell], work_dir: str | os.PathLike
) -> dict[tuple[str, int, int], Any]:
    """Each cell's FinetuneConfig, keyed by ``cell.key``, checked as :func:`cell_plans`
    checks it."""
    return {k: plan.config for k, plan in cell_plans(config, cells, work_dir).items()}


def check_folder(folder: Path, flag: str) -> None:
    """``folder`` (made if missing) must not be a file, and must be writable: a sweep
    refuses before its first cell rather than lose that cell's row."""
    from probe.files import check_writable

    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{flag} {str(folder)!r} is a file; pass a folder")
    check_writable(folder, flag)


# A row's ``status``: "ok" (also a row without one), or why the cell has no metrics.
OK, DIVERGED, FAILED = "ok", "diverged", "failed"
# A cell whose folder another live process holds (a worker of a killed sweep that is
# still saving): no row, so the next --resume runs it.
BUSY = "busy"


def is_failed(row: Mapping[str, Any]) -> bool:
    """Whether a results row records a cell that failed (``status`` other than ok)."""
    return row.get("status", OK) != OK


def run_cell(runner: Callable[[Any], Mapping[str, Any]], config: Any) -> tuple[str, Any]:
    """Run one cell: ``("ok", row)``, or ``("diverged" | "failed", one-line error)`` for
    a run that raised (``FloatingPointError``: the loss diverged), so one bad cell
    never stops a sweep. In a worker process this is what crosses back."""
    try:
        return OK, dict(runner(config))
    except InUse as e:
        return BUSY, error_row(e)
    except FloatingPointError as e:
        return DIVERGED, error_row(e)
    except Exception as e:  # any per-cell error: data, a model that cannot be built, ...
        return FAILED, error_row(e)


def _worker_init(sweep_pid: int) -> None:
    """A ``--jobs`` worker: one torch thread (N workers share the cores), Ctrl-C left to
    the parent, which stops the workers itself; SIGTERM / SIGUSR1 (forwarded by the
    parent) stop its cell at the next step with a checkpoint (:mod:`probe.preempt`),
    and so does the death of the sweep (a killed sweep leaves no orphan running a cell
    and holding its lock)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    preempt.install()
    _watch_sweep(sweep_pid)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


_busy = threading.Event()  # a worker is running a cell or pack


def _worker_call(fn: Callable[..., Any], *args: Any) -> Any:
    """A call in a worker process, marked busy while it runs."""
    _busy.set()
    try:
        return fn(*args)
    finally:
        _busy.clear()


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not: it has exited)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return not sys.platform.startswith("linux")  # no /proc entry on Linux: gone


def _watch_sweep(sweep_pid: int, every: float = 1.0) -> None:
    """A thread of the worker: once the sweep process is gone (SIGKILL, out of memory),
    SIGTERM this worker, so its cell stops at its next step with a checkpoint, then
    exit once the cell has ended (nobody is left to hand it another)."""

    def watch() -> None:
        while _alive(sweep_pid):
            time.sleep(every)
        os.kill(os.getpid(), signal.SIGTERM)
        while _busy.is_set():
            time.sleep(0.1)
        os._exit(EXIT_PREEMPTED)

    threading.Thread(target=watch, name="probe-watch-sweep", daemon=True).start()


# What a worker imports before its first cell: loaded once in the fork server.
WORKER_PRELOAD = ["probe.experiments.sweep", "probe.train.run", "probe.data.render"]


def _worker_context() -> Any:
    """Workers are forked from a fork server that has imported torch and probe once
    (``WORKER_PRELOAD``; it has never run torch's thread pools, so forking it is
    safe), so N workers start in a moment instead of importing N times; spawned
    where there is no fork server (Windows)."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(WORKER_PRELOAD)
    return ctx


def parse_jobs(jobs: int) -> int:
    """``--jobs N``: N worker processes; 0 means one per core."""
    if not is_int(jobs) or jobs < 0:
        raise ValueError(f"--jobs {jobs!r} must be 0 (one per core) or a positive integer")
    if jobs == 0:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not Linux
            return os.cpu_count() or 1
    return jobs


def parse_pack(pack: int) -> int:
    """``--pack K``: at most K cells a step (1: each cell alone)."""
    if not is_int(pack) or pack < 1:
        raise ValueError(
            f"--pack {pack!r} must be a positive integer (the most cells trained as one; 1: "
            "each alone)"
        )
    return pack


def _results(
    runner: Callable[[Any], Mapping[str, Any]],
    todo: list[Cell],
    configs: Mapping[tuple, Any],
    jobs: int,
    starting: Callable[[Cell], None],
    pack: int = 1,
) -> Iterable[tuple[Cell, str, Any]]:
    """``(cell, status, row or error)`` as cells finish: in this process with one job,
    else from a pool of ``jobs`` worker processes; with ``pack`` > 1, packs of cells
    (:func:`packs`). Stopping (Ctrl-C, an error) terminates the workers; the cells
    they were running have no row."""
    if pack > 1:
        yield from _packed_results(runner, todo, configs, pack, jobs, starting)
        return
    if jobs == 1 or len(todo) <= 1:
        for c in todo:
            _check_preempted()
            starting(c)
            yield (c, *run_cell(runner, configs[c.key]))
        return
    calls = [(c, run_cell, runner, configs[c.key]) for c in todo]
    for c, result in _in_workers(jobs, calls):
        yield (c, *result)


def _in_workers(jobs: int, calls: list[tuple]) -> Iterable[tuple[Any, Any]]:
    """``(tag, fn(*args))`` for each ``(tag, fn, *args)`` of ``calls``, as they finish in
    a pool of at most ``jobs`` worker processes. Stopping (Ctrl-C, an error) terminates
    the workers; the calls they were running return nothing."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    _check_preempted()
    pool = ProcessPoolExecutor(
        max_workers=min(jobs, len(calls)),
        mp_context=_worker_context(),
        initializer=_worker_init,
        initargs=(os.getpid(),),
    )

    def forward(signum: int) -> None:  # a preempting signal: the workers stop their cells
        for w in list((pool._processes or {}).values()):
            with contextlib.suppress(OSError):
                os.kill(w.pid, signum)

    stopped = None
    try:
        with preempt.forwarding(forward):
            futures = {pool.submit(_worker_call, fn, *args): tag for tag, fn, *args in calls}
            for future in as_completed(futures):
                try:
                    result = future.result()
                except Preempted as e:  # its checkpoint is saved; the others finish theirs
                    stopped = stopped or e
                    continue
                yield futures[future], result
        if stopped is not None:
            raise stopped
    except BaseException:
        workers = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for w in workers:
            w.kill()  # SIGTERM would only ask it to stop at its next step
        for w in workers:
            w.join(timeout=10)
        raise
    pool.shutdown()


def _check_preempted() -> None:
    """Before a cell or pack starts: a preempting signal stops the sweep here."""
    if (name := preempt.requested()) is not None:
        raise Preempted(name)


def packs(todo: Sequence[Cell], configs: Mapping[tuple, Any], pack: int) -> list[list[Cell]]:
    """``todo`` in groups of at most ``pack`` cells that can train as one
    (``probe.train.pack.pack_key``: every setting but the seed, the a/b variant and
    its learning rates equal, and n on a symbolic task), n by n (cells of one n train
    for as many steps, so a pack stays full to its end), otherwise in grid order: the
    4 variants × 3 seeds of one n make one pack of 12."""
    from probe.train.pack import pack_key

    groups: dict[str, list[Cell]] = {}
    for c in todo:
        groups.setdefault(pack_key(configs[c.key]), []).append(c)
    groups = {k: sorted(g, key=lambda c: c.n) for k, g in groups.items()}  # stable
    return [g[i : i + pack] for g in groups.values() for i in range(0, len(g), pack)]


def run_pack(runner: Callable[[Any], Mapping[str, Any]], configs: Sequence[Any]) -> list:
    """Run one pack to its end: ``(index, status, row or error)`` per cell, as
    :func:`run_cell` gives them (a pack that fails as a whole fails every cell of it).
    In a worker process this is what crosses back."""
    _check_preempted()
    return list(_pack_statuses(runner, configs))


def _pack_statuses(
    runner: Callable[[Any], Mapping[str, Any]], configs: Sequence[Any]
) -> Iterable[tuple[int, str, Any]]:
    from probe.train.pack import finetune_packed

    if len(configs) == 1:  # a pack of one is a lone run: the vectorized step would only cost
        yield (0, *run_cell(runner, configs[0]))
        return
    given: set[int] = set()
    try:
        for i, result in finetune_packed(configs):
            given.add(i)
            if isinstance(result, FloatingPointError):
                yield i, DIVERGED, error_row(result)
            elif isinstance(result, BaseException):
                yield i, FAILED, error_row(result)
            else:
                yield i, OK, dict(result)
    except Exception as e:  # the pack as a whole: every cell without a result fails
        status = BUSY if isinstance(e, InUse) else FAILED  # a held folder: no row
        for i in range(len(configs)):
            if i not in given:
                yield i, status, error_row(e)


def _packed_results(
    runner: Callable[[Any], Mapping[str, Any]],
    todo: list[Cell],
    configs: Mapping[tuple, Any],
    pack: int,
    jobs: int,
    starting: Callable[[Cell], None],
) -> Iterable[tuple[Cell, str, Any]]:
    """The packs' results: in this process (each cell's row as soon as it finishes),
    or with ``jobs`` > 1 one pack per worker (rows once its pack ends). A group of one
    cell runs alone, through ``runner``."""
    groups = packs(todo, configs, pack)
    if jobs == 1 or len(groups) <= 1:
        for group in groups:
            _check_preempted()
            starting(group[0])
            for i, status, result in _pack_statuses(runner, [configs[c.key] for c in group]):
                yield group[i], status, result
        return
    calls = [(group, run_pack, runner, [configs[c.key] for c in group]) for group in groups]
    for group, results in _in_workers(jobs, calls):
        for i, status, result in results:
            yield group[i], status, result


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


def select_cells(
    config: SweepConfig,
    shard: tuple[int, int] | None = None,
    variants: Sequence[str] | None = None,
    ns: Sequence[int] | None = None,
) -> list[Cell]:
    """The grid's cells this run owns: only ``variants`` (names of the recipe's, in its
    order) and only sample sizes ``ns`` if given, then every N-th from i for ``shard``
    (i, N)."""
    cells = config.cells()
    if ns is not None:
        cells = [c for c in cells if c.n in set(ns)]
    if variants:
        unknown = [v for v in variants if v not in config.variants]
        if unknown:
            hints = "".join(did_you_mean(v, config.variants) for v in unknown)
            raise ValueError(
                f"--variants {','.join(unknown)}: not in recipe {config.name!r}.{hints} Its "
                f"variants: {', '.join(config.variants)}"
            )
        cells = [c for c in cells if c.variant in set(variants)]
    return cells if shard is None else cells[shard[0] :: shard[1]]


def cell_hashes(
    config: SweepConfig, mine: list[Cell], configs: Mapping[tuple, Any]
) -> dict[tuple, str]:
    """Each cell's settings hash, as its row records it: every field, defaults included,
    so a changed default also counts as a change; the model as the recipe names it, not
    as resolved on this machine."""
    return {
        c.key: settings_hash(
            {**dataclasses.asdict(configs[c.key]), "model": config.cell_settings(c).get("model")}
        )
        for c in mine
    }


# The fields every sweep row holds: what names its cell.
CELL_FIELDS = ("recipe", "variant", "n", "seed")


def pending_cells(
    config: SweepConfig,
    out: Path,
    mine: list[Cell],
    hashes: Mapping[tuple, str],
    *,
    resume: bool,
    retry_failed: bool = False,
) -> list[Cell]:
    """The cells of ``mine`` that still need a run, given the rows already in ``out``.

    Refuses done cells without ``resume``, and a done cell whose recorded settings hash
    differs from the recipe's now (it would be mixed with rows of other settings). A
    failed cell's row counts as done unless ``retry_failed``.
    """
    existing = sorted(out.glob("results*.jsonl")) if out.is_dir() else []
    done: dict[tuple, dict] = {}
    for row in read_rows(existing, required=CELL_FIELDS):
        if row.get("recipe") == config.name:
            done[(row["variant"], row["n"], row["seed"])] = row
    mine_done = [c for c in mine if c.key in done]
    if mine_done and not resume:
        raise FileExistsError(
            f"{out} already holds {len(mine_done)} of this run's {len(mine)} cells; pass "
            f"--resume to run only the missing ones, --out NEW_FOLDER to keep them apart, "
            f"or --overwrite to delete them and start over"
        )
    for c in mine_done:
        recorded = done[c.key].get("cell_hash")
        if recorded is not None and recorded != hashes[c.key]:
            raise ValueError(
                f"cell {c.key} in {out} was run with other settings than recipe "
                f"{config.name!r} now gives (hash {recorded} != {hashes[c.key]}); pass "
                f"--overwrite to start over, or --out to write elsewhere"
            )
    return [c for c in mine if c.key not in done or (retry_failed and is_failed(done[c.key]))]


def n_star_skips(config: SweepConfig, out: Path) -> dict[str, int]:
    """``--until-n-star``: per variant whose n* is settled by the rows in ``out``, the
    n that settled it (every larger n of that variant is skipped).

    A variant is settled once the mean of its metric over the recipe's seeds (every seed
    run and ``ok``) is at or below the recipe's threshold at two consecutive sample
    sizes of the grid: n* is the first of them, and the second confirms it."""
    import pandas as pd

    from probe.experiments.report import metric_of

    existing = sorted(out.glob("results*.jsonl")) if out.is_dir() else []
    rows = [r for r in read_rows(existing) if r.get("recipe") == config.name]
    if not rows:
        return {}
    metric = metric_of(pd.DataFrame(rows))
    values: dict[tuple[str, int], dict[int, float]] = {}
    for r in rows:
        ok = not is_failed(r) and r.get(metric) is not None
        values.setdefault((r["variant"], r["n"]), {})[r["seed"]] = r[metric] if ok else None
    settled = {}
    ns = sorted(config.n)
    for v in config.variants:
        below = []
        for n in ns:
            seen = values.get((v, n), {})
            full = all(seen.get(s) is not None for s in config.seeds)
            below.append(
                full and sum(seen[s] for s in config.seeds) / len(config.seeds) <= config.threshold
            )
        for i in range(len(ns) - 1):
            if below[i] and below[i + 1]:
                settled[v] = ns[i + 1]
                break
    return settled


def skipped_cells(
    config: SweepConfig, mine: Sequence[Cell], settled: Mapping[str, int]
) -> list[Cell]:
    """The cells of ``mine`` that ``--until-n-star`` skips: larger n than settled them."""
    return [c for c in mine if c.variant in settled and c.n > settled[c.variant]]


def run_sweep(
    config: SweepConfig,
    out: str | os.PathLike | None = None,
    *,
    shard: tuple[int, int] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    retry_failed: bool = False,
    work_dir: str | os.PathLike | None = None,
    runner: Callable[[Any], Mapping[str, Any]] | None = None,
    jobs: int = 1,
    allow_dirty: bool = True,
    progress: bool = True,
    variants: Sequence[str] | None = None,
    pack: int = 1,
    ns: Sequence[int] | None = None,
    launcher: Any = None,
) -> list[dict[str, Any]]:
    """Run the (shard of the) grid; returns the rows appended by this call (failed
    cells' rows included: ``status`` says which).

    ``out`` (default ``results/<name>``) receives the results file; each cell's
    finetune output (checkpoints, its own results.jsonl) goes to
    ``work_dir/<variant>/n<n>-seed<seed>`` (default ``runs/sweep/<name>``, which
    git ignores). ``runner`` defaults to :func:`probe.train.run.finetune`; with
    ``allow_dirty=False`` (the ``probe sweep`` default) refuses to run cells while
    ``probe/`` has uncommitted changes. With
    ``jobs`` > 1 it runs in that many worker processes and must be picklable (a
    module-level function). Everything is validated, every cell's configuration
    checked and both folders checked before the first run; the results file is
    locked for the whole sweep. A failed cell's row counts as done on
    ``resume`` unless ``retry_failed`` (which implies ``resume``). ``variants`` runs
    only those variants' cells, ``ns`` only those sample sizes (:func:`select_cells`). ``pack`` > 1 trains up to that
    many cells that differ only in their seed (or n, on regression tasks) as one vectorized step
    (:mod:`probe.train.pack`; checked for every cell before the first runs).
    ``launcher`` (a :class:`probe.experiments.launchers.LauncherSpec`, ``"ray"`` /
    ``"slurm"``, or a launcher made by ``launchers.make_launcher``; default: local)
    runs the units elsewhere; this process still writes every row.
    """
    from probe.files import file_lock

    out = Path(out if out is not None else Path("results") / config.name)
    work_dir = Path(work_dir if work_dir is not None else Path("runs") / "sweep" / config.name)
    resume = resume or retry_failed
    if resume and overwrite:
        raise ValueError("pass --resume (or --retry-failed) or --overwrite, not both")
    jobs = parse_jobs(jobs)
    pack = parse_pack(pack)
    from probe.experiments.launchers import make_launcher

    launcher = make_launcher(launcher)
    path = results_path(out, shard)

    if variants and overwrite:
        raise ValueError(
            "--overwrite deletes every row of --out, not only those of --variants; pass "
            "--resume to run the chosen variants' missing cells"
        )
    cells = config.cells()
    mine = select_cells(config, shard, variants, ns)
    settings = {c.key: config.cell_settings(c) for c in mine}
    plans = cell_plans(config, mine, work_dir)
    configs = {k: plan.config for k, plan in plans.items()}
    hashes = cell_hashes(config, mine, configs)
    if pack > 1:
        from probe.train.pack import check_packable

        check_packable(list(plans.values()))
    code = _code_version()
    tree = code_tree()
    kinds = {k: plan.label_kind for k, plan in plans.items()}
    check_folder(out, "--out")
    check_folder(work_dir, "--work-dir")
    if path.exists() and not path.is_file():
        raise ProbeError(
            f"--out {str(out)!r}: {str(path)!r} is not a file (a folder?); move it away or "
            "pass another --out"
        )

    lock = file_lock(
        out / f".{path.name}.lock",
        f"results file {str(path)!r}",
        "pass another --out (to split one grid over processes, use --jobs or --shard)",
    )
    with lock, results_folder_lock(out, shard):
        if overwrite:
            for p in out.glob("results*.jsonl"):
                if p == path or shard is None:
                    p.unlink()
        todo = pending_cells(config, out, mine, hashes, resume=resume, retry_failed=retry_failed)

        dirty = uncommitted_code() if todo and not allow_dirty else []
        if dirty:
            shown = ", ".join(dirty[:3]) + (f" and {len(dirty) - 3} more" if len(dirty) > 3 else "")
            raise ValueError(
                f"probe/ has uncommitted changes ({shown}): rows record the commit they were "
                "made with, and these would match none. Commit first, or pass --allow-dirty "
                "(rows then say +dirty)"
            )
        if runner is None:
            from probe.train.run import finetune as runner
        from tqdm.auto import tqdm

        rows = []
        failed = 0
        busy: list[str] = []
        # one bar: cells done / total, elapsed, remaining, failures (and the running
        # cell, with one job)
        bar = tqdm(total=len(todo), desc=f"sweep {config.name}", unit="cell", disable=not progress)

        last = ""  # the last finished cell and its metric

        def show(running: Cell | None = None) -> None:
            text = f"failed={failed}" + last
            if running is not None:
                text += f", running {running.variant} n={running.n} seed={running.seed}"
            bar.set_postfix_str(text)

        with bar:
            show()
            if launcher is None:
                source = _results(runner, todo, configs, jobs, show, pack)
            else:  # probe.experiments.launchers: ray, slurm
                source = launcher.results(
                    runner, todo, configs, hashes, pack, work_dir, config.name
                )
            for c, status, result in source:
                if status == BUSY:  # no row: the next --resume runs it
                    busy.append(result)
                    bar.update()
                    continue
                row = {
                    "recipe": config.name,
                    "variant": c.variant,
                    "n": c.n,
                    "seed": c.seed,
                    "variant_index": c.variant_index,
                    "task": settings[c.key]["task"],
                    "label_kind": kinds[c.key],
                    "description": config.description,
                    "baseline": config.baseline,
                    "threshold": config.threshold,
                    "grid_cells": len(cells),
                    "cell_hash": hashes[c.key],
                    "code": code,
                    "code_tree": tree,
                    "status": status,
                }
                if status == OK:
                    row.update(
                        {k: v for k, v in result.items() if k not in ("variant", "n", "recipe")}
                    )
                    row["seed"] = c.seed
                    row["status"] = OK
                else:
                    row["error"] = result
                    failed += 1
                # the model as the recipe names it (`offline:smollm2`); config holds the
                # resolved path
                row["model"] = settings[c.key].get("model") or row.get("model")
                append_row(path, row)  # probe.jsonl: locked, on a fresh line
                rows.append(row)
                metric = "test_error" if kinds[c.key] == "symbolic" else "test_loss"
                value = row.get(metric)
                told = f"{metric} {value:.3g}" if isinstance(value, (int, float)) else status
                last = f", last {c.variant} n={c.n} seed={c.seed}: {told}"
                show()
                bar.update()
    if busy:
        raise InUse(
            f"{len(busy)} cell(s) were not run and have no row: their folders are held by "
            f"another probe process ({busy[0]}); once it ends, run the same command with "
            "--resume to run them"
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="probe sweep",
        description="Run a recipe's grid (variant x n x seed) through finetune, one row per cell.",
    )
    p.add_argument("recipe", help="a recipe YAML file, e.g. recipes/aba_vs_abb.yaml")
    p.add_argument(
        "--out",
        default=None,
        help="results folder (default: results/<recipe name>; results/paper/<name> for "
        "recipes/paper/<name>.yaml)",
    )
    p.add_argument(
        "--work-dir",
        default=None,
        help="folder for each cell's checkpoints (default: runs/sweep/<recipe name>, "
        "runs/sweep/paper/<name> for recipes/paper/<name>.yaml)",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="i/N",
        help="run every N-th cell from i (0 <= i < N) into results-shard-i-of-N.jsonl",
    )
    p.add_argument(
        "--variants",
        default=None,
        metavar="A,B",
        help="run only these variants of the recipe (comma-separated; a name holding commas, like kq,vo, is read whole; default: all)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="run only the cells without a row (a failed cell's row counts as done)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume (implied): also run again the cells whose row says they failed",
    )
    p.add_argument("--overwrite", action="store_true", help="delete earlier rows and start over")
    p.add_argument(
        "--allow-dirty",
        action="store_true",
        help="run although probe/ has uncommitted changes (rows then record +dirty)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="cells run at once, each in its own process with one torch thread (0: one per "
        "core; default: 1, in this process)",
    )
    p.add_argument(
        "--pack",
        type=int,
        default=1,
        metavar="K",
        help="train up to K cells that differ only in their seed, a/b variant, a/b learning rates (or n, on "
        "regression tasks) as one vectorized step, n by n (decoder-only models without dropout, e.g. "
        "--model paper; default: 1, each alone)",
    )
    p.add_argument(
        "--until-n-star",
        action="store_true",
        help="run n ascending, round by round, and skip a variant's larger n once its mean "
        "over seeds is at or below the threshold at two consecutive n (n* settled); the "
        "skipped cells are listed, and --resume skips them too",
    )
    from probe.experiments.launchers import add_arguments

    add_arguments(p)
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check every cell's configuration, print the cells and exit",
    )
    return p


def main(argv: list[str] | None = None) -> None:
    """``probe sweep``: a user error is one line (exit 2); SIGTERM or SIGUSR1 stops the
    running cells at their next step with a checkpoint (forwarded to ``--jobs``
    workers, then waited for), keeps every finished cell's row, prints the command
    that continues and exits 75 (``probe.errors.EXIT_PREEMPTED``)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    with one_line_errors("probe sweep"):
        try:
            with preempt.handled(interrupt=False):
                _main(args)
        except Preempted as stopped:
            resumed = [a for a in argv if a != "--overwrite"]
            resumed += [] if {"--resume", "--retry-failed"} & set(argv) else ["--resume"]
            raise Preempted(
                stopped.signal,
                detail="the finished cells' rows are saved, the running ones checkpointed",
            ).with_command(shlex.join(["probe", "sweep", *resumed])) from None
        except KeyboardInterrupt:
            parser.exit(
                130,
                "probe sweep: interrupted; the finished cells' rows are saved — run the same "
                "command with --resume to run the rest\n",
            )
        except BrokenProcessPool:
            parser.exit(
                1,
                "probe sweep: error: a --jobs worker process died (killed, or out of memory?); "
                "the finished cells' rows are saved — run the same command with --resume "
                "(and fewer --jobs) to run the rest\n",
            )


def _until_n_star(
    args: argparse.Namespace,
    config: SweepConfig,
    shard: tuple[int, int] | None,
    out: Path,
    variants: Sequence[str] | None,
    launcher: Any = None,
) -> None:
    """``probe sweep --until-n-star``: one :func:`run_sweep` per sample size, ascending,
    over the variants whose n* the rows so far leave open (each round through
    ``launcher``, which must hand its rows back before the next); then the skipped
    cells."""
    work_dir = args.work_dir if args.work_dir is not None else default_work_dir(args.recipe, config)
    chosen = list(variants or config.variants)
    run = failed = 0
    for i, n in enumerate(sorted(config.n)):
        settled = {} if i == 0 and args.overwrite else n_star_skips(config, out)
        open_variants = [v for v in chosen if v not in settled or n <= settled[v]]
        if not open_variants:
            continue
        rows = run_sweep(
            config,
            out,
            shard=shard,
            variants=open_variants,
            ns=[n],
            resume=args.resume or i > 0,
            overwrite=args.overwrite and i == 0,
            retry_failed=args.retry_failed,
            work_dir=work_dir,
            jobs=args.jobs,
            allow_dirty=args.allow_dirty,
            pack=args.pack,
            launcher=launcher,
        )
        run += len(rows)
        failed += sum(is_failed(r) for r in rows)
    mine = select_cells(config, shard, variants)
    skipped = skipped_cells(config, mine, n_star_skips(config, out))
    note = f", {failed} failed (--retry-failed runs them again)" if failed else ""
    print(
        f"sweep {config.name}: {run} cell(s) run{note} -> {results_path(out, shard)}; "
        f"--until-n-star skipped {len(skipped)} cell(s) past a settled n*"
    )
    for c in skipped:
        print(f"  skipped {c.variant:>12}  n={c.n:<6} seed={c.seed}")


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


def cell_estimates(folders: Iterable[Path]) -> dict[tuple[str, int], float]:
    """Mean ``wall_s`` per (variant, n) over the finished rows in ``folders``' results
    files: what a cell of the same recipe took before (any seed)."""
    seconds: dict[tuple[str, int], list[float]] = {}
    for folder in folders:
        files = sorted(folder.glob("results*.jsonl")) if folder.is_dir() else []
        for row in read_rows(files) if files else []:
            if row.get("status", OK) == OK and isinstance(row.get("wall_s"), (int, float)):
                seconds.setdefault((row["variant"], int(row["n"])), []).append(row["wall_s"])
    return {k: sum(v) / len(v) for k, v in seconds.items()}


def format_seconds(s: float) -> str:
    """``45 s``, ``12 min``, ``3.4 h``."""
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _main(args: argparse.Namespace) -> None:
    config = SweepConfig.from_yaml(args.recipe)
    shard = parse_shard(args.shard)
    out = Path(args.out) if args.out is not None else default_out(args.recipe, config)
    variants = parse_variants(args.variants, config.variants) if args.variants else None
    from probe.experiments.launchers import make_launcher, spec_from_args

    spec = spec_from_args(args, config.launcher)
    if args.until_n_star and spec.kind == "slurm" and not spec.wait and not args.dry_run:
        raise ProbeError(
            "--until-n-star with --launcher slurm needs --wait: each round's n is decided "
            "by the rows of the one before, so the sweep must collect them before it "
            "submits the next (or drop --until-n-star to submit the whole grid at once)"
        )
    launcher = make_launcher(spec)
    if args.dry_run:
        cells = config.cells()
        mine = select_cells(config, shard, variants)
        parse_jobs(args.jobs)
        pack = parse_pack(args.pack)
        plans = cell_plans(config, mine, "runs")  # checks every cell as the sweep would
        configs = {k: plan.config for k, plan in plans.items()}
        if pack > 1:
            from probe.train.pack import check_packable

            check_packable(list(plans.values()))
        check_folder(out, "--out")
        if args.work_dir is not None:
            check_folder(Path(args.work_dir), "--work-dir")
        todo = mine
        if not args.overwrite:  # what --resume / --retry-failed would leave to run
            resume = args.resume or args.retry_failed
            hashes = cell_hashes(config, mine, configs)
            todo = pending_cells(
                config, out, mine, hashes, resume=resume, retry_failed=args.retry_failed
            )
        skipped = []
        if args.until_n_star and not args.overwrite:
            skipped = skipped_cells(config, todo, n_star_skips(config, out))
            todo = [c for c in todo if c not in set(skipped)]
        grouped = (
            f" in {len(packs(todo, configs, pack))} packs of at most {pack}" if pack > 1 else ""
        )
        print(f"recipe {config.name}: {len(todo)} of {len(cells)} cells to run{grouped}")
        sources = [p for p in (out, committed_out(args.recipe, config)) if p is not None]
        estimates = cell_estimates(sources)
        for c in todo:
            known = estimates.get((c.variant, c.n))
            guess = f"  ~{format_seconds(known)}" if known is not None else ""
            print(f"  {c.variant:>12}  n={c.n:<6} seed={c.seed}{guess}")
        known = [estimates[(c.variant, c.n)] for c in todo if (c.variant, c.n) in estimates]
        if known:
            jobs = parse_jobs(args.jobs)
            unknown = len(todo) - len(known)
            print(
                f"estimated time: ~{format_seconds(sum(known))} of cells"
                + (
                    f" (~{format_seconds(sum(known) / jobs)} with --jobs {jobs})"
                    if jobs > 1
                    else ""
                )
                + (f", and {unknown} cells never run before" if unknown else "")
                + f", from the wall_s of earlier rows in {', '.join(map(str, sources))} "
                "(measured on their machine; another load or core count changes it)"
            )
        elif todo:
            print(
                "estimated time: unknown (no earlier rows of this recipe; a cell of the small "
                "model takes up to 1000 steps, 1-4 min on a CPU core)"
            )
        if args.until_n_star:
            print(
                f"--until-n-star: {len(skipped)} cell(s) skipped now (n* settled)"
                + (", more as rounds settle n*" if todo else "")
            )
            for c in skipped:
                print(f"  skipped {c.variant:>12}  n={c.n:<6} seed={c.seed}")
        return
    if args.until_n_star:
        _until_n_star(args, config, shard, out, variants, launcher)
        return
    rows = run_sweep(
        config,
        out,
        shard=shard,
        variants=variants,
        resume=args.resume,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        work_dir=args.work_dir
        if args.work_dir is not None
        else default_work_dir(args.recipe, config),
        jobs=args.jobs,
        allow_dirty=args.allow_dirty,
        pack=args.pack,
        launcher=launcher,
    )
    failed = sum(is_failed(r) for r in rows)
    note = (
        f", {failed} failed (their rows give status and error; --retry-failed runs them again)"
        if failed
        else ""
    )
    print(f"sweep {config.name}: {len(rows)} cell(s) run{note} -> {results_path(out, shard)}")
    if launcher is not None and launcher.note:
        print(launcher.note)


if __name__ == "__main__":
    main()
