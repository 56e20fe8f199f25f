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

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from probe.errors import InUse, ProbeError
from probe.experiments.cells import (
    pending_cells,
    plan_sweep,
    results_path,
)
from probe.experiments.pool import BUSY, OK, _results
from probe.experiments.recipe import (
    Cell,
    SweepConfig,
)
from probe.files import code_tree, code_version, uncommitted_code
from probe.jsonl import append_row

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


# -- running -----------------------------------------------------------------------


def _code_version() -> str:
    """probe's version and, in a git checkout, the commit (``-dirty`` with local edits to
    ``probe/``: :func:`uncommitted_code`; results files being written elsewhere in the
    checkout, another sweep's say, are not the code)."""
    return code_version(dirty=bool(uncommitted_code()))


@dataclass(frozen=True)
class SweepOptions:
    """How :func:`run_sweep` runs a recipe's grid (each field as its keyword argument
    there): which cells (``shard``, ``variants``, ``ns``), what becomes of the rows
    already there (``resume``, ``overwrite``, ``retry_failed``), where and how cells run
    (``work_dir``, ``runner``, ``jobs``, ``pack``, ``launcher``), ``allow_dirty`` and
    ``progress``. ``dataclasses.replace`` makes one round's options from a sweep's
    (``probe sweep --until-n-star``)."""

    shard: tuple[int, int] | None = None
    resume: bool = False
    overwrite: bool = False
    retry_failed: bool = False
    work_dir: str | os.PathLike | None = None
    runner: Callable[[Any], Mapping[str, Any]] | None = None
    jobs: int = 1
    allow_dirty: bool = True
    progress: bool = True
    variants: Sequence[str] | None = None
    pack: int = 1
    ns: Sequence[int] | None = None
    launcher: Any = None


def run_sweep(
    config: SweepConfig,
    out: str | os.PathLike | None = None,
    options: SweepOptions | None = None,
    **given: Any,
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

    The options are ``options`` (a :class:`SweepOptions`) with the keyword arguments
    ``given`` (its field names) put over it: ``run_sweep(config, out, resume=True)``.
    """
    from probe.files import file_lock

    o = replace(options if options is not None else SweepOptions(), **given)
    shard, resume, overwrite, retry_failed = o.shard, o.resume, o.overwrite, o.retry_failed
    work_dir, runner, jobs, pack, launcher = o.work_dir, o.runner, o.jobs, o.pack, o.launcher
    variants, ns, allow_dirty, progress = o.variants, o.ns, o.allow_dirty, o.progress

    out = Path(out if out is not None else Path("results") / config.name)
    work_dir = Path(work_dir if work_dir is not None else Path("runs") / "sweep" / config.name)
    resume = resume or retry_failed
    if resume and overwrite:
        raise ValueError("pass --resume (or --retry-failed) or --overwrite, not both")
    from probe.experiments.launchers import make_launcher

    launcher = make_launcher(launcher)
    path = results_path(out, shard)
    if variants and overwrite:
        raise ValueError(
            "--overwrite deletes every row of --out, not only those of --variants; pass "
            "--resume to run the chosen variants' missing cells"
        )
    planned = plan_sweep(
        config, out, work_dir, shard=shard, variants=variants, ns=ns, jobs=jobs, pack=pack
    )
    jobs, pack, mine = planned.jobs, planned.pack, planned.cells
    configs, hashes = planned.configs, planned.hashes
    settings = {c.key: config.cell_settings(c) for c in mine}
    kinds = {k: plan.label_kind for k, plan in planned.plans.items()}
    code = _code_version()
    tree = code_tree()
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
                    "grid_cells": len(planned.grid),
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
