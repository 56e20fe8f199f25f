"""``probe sweep``: run a recipe's grid through ``probe.experiments.sweep.run_sweep``,
its dry run (``--dry-run``: the cells left, time estimates) and ``--until-n-star``'s
rounds; what the sweep did, printed."""

from __future__ import annotations

import argparse
import shlex
import sys
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from probe import preempt
from probe.cli import entry_points
from probe.errors import Preempted, ProbeError
from probe.experiments import sweep
from probe.experiments.cells import (
    estimate_cells,
    n_star_skips,
    parse_shard,
    pending_cells,
    plan_sweep,
    results_path,
    select_cells,
    skipped_cells,
)
from probe.experiments.pool import is_failed, packs, parse_jobs, start_fork_server
from probe.experiments.recipe import (
    SweepConfig,
    committed_out,
    default_out,
    default_work_dir,
    parse_variants,
)

NAME = "sweep"
HELP = "run a recipe's grid of runs"
DESCRIPTION = "Run a recipe's grid (variant x n x seed) through finetune, one row per cell."


def add_arguments(p: argparse.ArgumentParser) -> None:
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


build_parser, add_parser, _ = entry_points(__name__)  # main: `probe sweep ARGV`, below


def run(args: argparse.Namespace) -> None:
    """SIGTERM or SIGUSR1 stops the running cells at their next step with a checkpoint
    (forwarded to ``--jobs`` workers, then waited for), keeps every finished cell's
    row, prints the command that continues and exits 75
    (``probe.errors.EXIT_PREEMPTED``)."""
    argv = getattr(args, "argv", [])
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
        print(
            "probe sweep: interrupted; the finished cells' rows are saved — run the same "
            "command with --resume to run the rest",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    except BrokenProcessPool:
        print(
            "probe sweep: error: a --jobs worker process died (killed, or out of memory?); "
            "the finished cells' rows are saved — run the same command with --resume "
            "(and fewer --jobs) to run the rest",
            file=sys.stderr,
        )
        raise SystemExit(1) from None


def main(argv: list[str] | None = None) -> None:
    """``probe sweep ARGV``: a user error is one line (exit 2)."""
    from probe.cli import run_command

    run_command(NAME, argv)


def _until_n_star(config: SweepConfig, out: Path, options: sweep.SweepOptions) -> None:
    """``probe sweep --until-n-star``: one :func:`run_sweep` per sample size, ascending,
    over the variants whose n* the rows so far leave open (each round through
    ``launcher``, which must hand its rows back before the next); then the skipped
    cells."""
    chosen = list(options.variants or config.variants)
    run = failed = 0
    for i, n in enumerate(sorted(config.n)):
        settled = {} if i == 0 and options.overwrite else n_star_skips(config, out)
        open_variants = [v for v in chosen if v not in settled or n <= settled[v]]
        if not open_variants:
            continue
        rows = sweep.run_sweep(
            config,
            out,
            options,
            variants=open_variants,
            ns=[n],
            resume=options.resume or i > 0,
            overwrite=options.overwrite and i == 0,
        )
        run += len(rows)
        failed += sum(is_failed(r) for r in rows)
    shard = options.shard
    mine = select_cells(config, shard, options.variants)
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
    if not args.dry_run and spec.kind == "local" and parse_jobs(args.jobs) > 1:
        start_fork_server()  # its imports overlap the planning below
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
        by_place = {p.resolve(): p for p in reversed(sources)}  # one folder once, first name
        sources = list(reversed(by_place.values()))
        estimates = estimate_cells(todo, configs, sources)
        for c in todo:
            seconds, how = estimates.get(c.key, (None, ""))
            guess = f"  ~{format_seconds(seconds)}" if seconds is not None else ""
            print(f"  {c.variant:>12}  n={c.n:<6} seed={c.seed}{guess}{f' ({how})' if how else ''}")
        known = [estimates[c.key][0] for c in todo if c.key in estimates]
        if known:
            jobs = parse_jobs(args.jobs)
            unknown = len(todo) - len(known)
            scaled = sum(1 for c in todo if estimates.get(c.key, (0, ""))[1])
            print(
                f"estimated time: ~{format_seconds(sum(known))} of cells"
                + (
                    f" (~{format_seconds(sum(known) / jobs)} with --jobs {jobs})"
                    if jobs > 1
                    else ""
                )
                + (f", and {unknown} cells not estimated" if unknown else "")
                + f", from the wall_s of earlier rows in {', '.join(map(str, sources))}"
                + (
                    f" ({scaled} cells never run before: their planned steps at their "
                    "variant's seconds per step, an upper bound where an early stop may "
                    "end them sooner)"
                    if scaled
                    else ""
                )
                + " (measured on their machine; another load or core count changes it)"
            )
        elif todo:
            steps = [configs[c.key].planned_steps for c in todo if c.key in configs]
            planned = (
                f"; its cells plan {sum(steps):,} steps in all, at most"
                if steps and all(steps)
                else ""
            )
            print(
                f"estimated time: unknown (no earlier rows of this recipe{planned}; a step of "
                "the small model takes ~10-20 ms on a CPU core)"
            )
        if args.until_n_star:
            print(
                f"--until-n-star: {len(skipped)} cell(s) skipped now (n* settled)"
                + (", more as rounds settle n*" if todo else "")
            )
            for c in skipped:
                print(f"  skipped {c.variant:>12}  n={c.n:<6} seed={c.seed}")
        return
    options = sweep.SweepOptions(
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
    if args.until_n_star:
        _until_n_star(config, out, options)
        return
    rows = sweep.run_sweep(config, out, options)
    failed = sum(is_failed(r) for r in rows)
    note = (
        f", {failed} failed (their rows give status and error; --retry-failed runs them again)"
        if failed
        else ""
    )
    print(f"sweep {config.name}: {len(rows)} cell(s) run{note} -> {results_path(out, shard)}")
    if launcher is not None and launcher.note:
        print(launcher.note)
