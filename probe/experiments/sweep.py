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
import os
import shlex
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from probe import preempt
from probe.errors import InUse, Preempted, ProbeError, one_line_errors
from probe.experiments.cells import (
    cell_estimates,
    n_star_skips,
    parse_shard,
    pending_cells,
    plan_sweep,
    results_path,
    select_cells,
    skipped_cells,
)
from probe.experiments.pool import BUSY, OK, _results, is_failed, packs, parse_jobs
from probe.experiments.recipe import (
    Cell,
    SweepConfig,
    committed_out,
    default_out,
    default_work_dir,
    parse_variants,
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
        planned = plan_sweep(  # checks every cell as the sweep would
            config,
            out,
            Path(args.work_dir or "runs"),
            shard=shard,
            variants=variants,
            jobs=args.jobs,
            pack=args.pack,
            check_work_dir=args.work_dir is not None,
        )
        cells, mine, configs, pack = planned.grid, planned.cells, planned.configs, planned.pack
        todo = mine
        if not args.overwrite:  # what --resume / --retry-failed would leave to run
            resume = args.resume or args.retry_failed
            todo = pending_cells(
                config, out, mine, planned.hashes, resume=resume, retry_failed=args.retry_failed
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
