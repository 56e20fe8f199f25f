"""How much faster a sweep runs with ``--jobs 2`` than with ``--jobs 1``, and what the
Ray and SLURM launchers cost over ``--jobs 2``.

A small fixed recipe (``aba_vs_abb``, plain vs +KQ, 4 sample sizes, one seed:
8 cells of a 2-layer, 64-wide GPT-2 built from scratch, a fixed number of
steps, so each cell takes a few seconds on one core) runs through
``probe.experiments.sweep.run_sweep`` with ``jobs=1`` (in this process) and
``jobs=2`` (two worker processes forked from a fork server, one torch thread
each), alternating, best of ``--repeat``. One-time start-up is left out of both
(a warm-up cell for ``--jobs 1``; for ``--jobs 2`` the fork server's imports,
paid by the first run only, which is printed too). Prints the
times and ``sweep jobs2/jobs1 speedup: <x>`` (target: >= 1.7 on 2 free cores;
on a machine shared with other work it is lower). Also checks that both give
the same metrics.

Then the launchers (``probe.experiments.launchers``) on the same 8 cells and 2 CPUs:
``--launcher local --jobs 2``, ``--launcher ray`` (a local Ray of 2 CPUs, started
once by the bench and joined by each sweep, as a sweep joins a running cluster: its
start and the first sweep's worker imports are printed apart) and ``--launcher
slurm`` through submitit's local executor (2 array tasks of 4 cells; each sweep
starts its own processes, so their imports are counted). Prints the wall times,
the CPU seconds of this process tree (every process started for the sweep:
workers, Ray's daemons, submitit's controllers), ``ray/local overhead: <x>`` and
``submitit-local/local overhead: <x>`` (wall-time ratios; target <= 1.15), and
checks that all three give the same metrics. These launcher figures are "warm": the
local pool's fork server and Ray's workers have imported torch and probe before the
timed runs, while every submitit array task is a fresh process that imports them
(~4-5 s here) against cells of ~1 s, which is most of submitit's overhead.

Last, what a user waits for: one fresh ``probe sweep`` command per launcher, start
to end, with every process start and import counted (local: the driver and its fork
server; submitit: the driver and its array tasks; ray: the driver, a local Ray
started and stopped by the command, its workers). Prints ``fresh command ray/local
overhead`` and ``fresh command submitit-local/local overhead`` (wall time).

    OMP_NUM_THREADS=1 python bench/sweep.py [--repeat 2] [--steps 150] [--only jobs|launchers|commands]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from probe.experiments.sweep import SweepConfig, run_sweep  # noqa: E402


def recipe_dict(steps: int) -> dict:
    return {
        "name": "bench_sweep",
        "task": "aba_vs_abb",
        "n": [16, 32, 64, 128],
        "seeds": [0],
        "variants": {"none": {"ab": "none"}, "kq": {"ab": "kq"}},
        "finetune": {
            "model": "gpt2",
            "pretrained": False,
            "n_layer": 2,
            "n_embd": 64,
            "n_head": 4,
            "batch_size": 64,
            "max_steps": steps,
            "n_val": 0,
            "n_test": 256,
            "checkpoints": False,
        },
    }


def recipe(steps: int) -> SweepConfig:
    return SweepConfig.from_dict(recipe_dict(steps))


def timed(
    config: SweepConfig, jobs: int, root: Path, launcher: object = None
) -> tuple[float, list[dict]]:
    out = Path(tempfile.mkdtemp(dir=root))
    t0 = time.perf_counter()
    rows = run_sweep(
        config,
        out / "results",
        work_dir=out / "work",
        jobs=jobs,
        progress=False,
        launcher=launcher,
    )
    return time.perf_counter() - t0, rows


def tree_cpu() -> float:
    """CPU seconds of this process and its live descendants, each with the children it
    reaped (a finished worker's time moves to its parent's, so nothing is lost while
    the process that started it lives)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def cpu_timed(config: SweepConfig, jobs: int, root: Path, launcher: object = None):
    before = tree_cpu()
    seconds, rows = timed(config, jobs, root, launcher)
    return seconds, tree_cpu() - before, rows


def compare_launchers(config: SweepConfig, repeat: int) -> None:
    """--launcher local --jobs 2 against ray (local) and slurm (submitit's local executor)."""
    import ray

    from probe.experiments.launchers import LauncherSpec, start_local_ray

    cells = len(config.cells())
    slurm = LauncherSpec(kind="slurm", cluster="local", array_parallelism=2, wait=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        start_local_ray(2)
        print(f"  ray start (once per cluster): {time.perf_counter() - t0:.1f} s")
        seconds, cpu, _ = cpu_timed(config, 1, root, "ray")
        print(
            f"  ray, first sweep (workers import torch and probe): {seconds:.1f} s, {cpu:.0f} cpu-s"
        )
        best: dict[str, tuple[float, float]] = {}
        seen: dict[str, list[tuple]] = {}
        try:
            for i in range(repeat):
                for name, jobs, launcher in (
                    ("local", 2, None),
                    ("ray", 1, "ray"),
                    ("submitit-local", 1, slurm),
                ):
                    seconds, cpu, rows = cpu_timed(config, jobs, root, launcher)
                    print(
                        f"  run {i + 1}, {name}: {seconds:.1f} s ({seconds / cells:.2f} s/cell), "
                        f"{cpu:.0f} cpu-s"
                    )
                    if name not in best or seconds < best[name][0]:
                        best[name] = (seconds, cpu)
                    seen[name] = metrics(rows)
        finally:
            ray.shutdown()
    same = seen["local"] == seen["ray"] == seen["submitit-local"]
    print(f"same metrics with local, ray and submitit-local: {'yes' if same else 'NO'}")
    for name, (seconds, cpu) in best.items():
        print(f"sweep {name}: {seconds:.1f} s wall, {cpu:.0f} cpu-s (best of {repeat})")
    local = best["local"][0]
    print(f"ray/local overhead: {best['ray'][0] / local:.2f}")
    print(f"submitit-local/local overhead: {best['submitit-local'][0] / local:.2f}")
    # CPU seconds: the steadier figure on a machine shared with other work
    cpu = best["local"][1]
    print(
        f"cpu seconds over local's: ray {best['ray'][1] / cpu:.2f}, "
        f"submitit-local {best['submitit-local'][1] / cpu:.2f}"
    )


def compare_commands(steps: int, repeat: int) -> None:
    """What a user waits for: one fresh ``probe sweep`` command per launcher, start to
    end, every process start and import counted (the driver's, the local pool's fork
    server, the array tasks'; Ray starts its own local cluster, which a sweep that
    joins a running cluster with ``--address`` does not pay). Alternated, best of
    ``repeat``; wall time only (Ray's daemons outlive the command, so no CPU sum)."""
    import shutil
    import subprocess
    import sys

    import yaml

    from probe.jsonl import read_rows

    exe = Path(sys.executable).with_name("probe")
    probe = (
        [str(exe)]
        if exe.is_file()
        else [sys.executable, "-c", "from probe.cli import main; main()"]
    )
    cells = len(recipe(steps).cells())
    flags = {
        "local": ["--launcher", "local", "--jobs", "2"],
        "submitit-local": [
            "--launcher", "slurm", "--cluster", "local", "--array-parallelism", "2", "--wait",
        ],
        "ray": ["--launcher", "ray", "--cpus-per-cell", "1"],
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    best: dict[str, float] = {}
    seen: dict[str, list[tuple]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench_sweep.yaml"
        path.write_text(yaml.safe_dump(recipe_dict(steps)))
        for i in range(repeat):
            for name, extra in flags.items():
                out = Path(tmp) / "out"
                shutil.rmtree(out, ignore_errors=True)
                command = [*probe, "sweep", str(path), "--out", str(out / "results"),
                           "--work-dir", str(out / "work"), "--allow-dirty", *extra]  # fmt: skip
                t0 = time.perf_counter()
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - t0
                if done.returncode != 0:
                    raise SystemExit(f"{name}: probe sweep failed:\n{done.stderr[-2000:]}")
                print(f"  run {i + 1}, {name}: {seconds:.1f} s ({seconds / cells:.2f} s/cell)")
                best[name] = min(best.get(name, seconds), seconds)
                seen[name] = metrics(read_rows(out / "results" / "results.jsonl"))
    same = seen["local"] == seen["ray"] == seen["submitit-local"]
    print(f"same metrics from the three commands: {'yes' if same else 'NO'}")
    for name, seconds in best.items():
        print(f"command {name}: {seconds:.1f} s wall (best of {repeat})")
    local = best["local"]
    print(f"fresh command ray/local overhead: {best['ray'] / local:.2f}")
    print(f"fresh command submitit-local/local overhead: {best['submitit-local'] / local:.2f}")


def metrics(rows: list[dict]) -> list[tuple]:
    return sorted((r["variant"], r["n"], r["seed"], r["test_loss"], r["steps"]) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, best kept")
    parser.add_argument("--steps", type=int, default=150, help="training steps per cell")
    parser.add_argument(
        "--only",
        choices=("jobs", "launchers", "commands"),
        default=None,
        help="one of the three comparisons",
    )
    args = parser.parse_args()
    import torch

    config = recipe(args.steps)
    cells = len(config.cells())
    print(
        f"{cells} cells x {args.steps} steps; --jobs 1 with {torch.get_num_threads()} torch "
        f"thread(s), {os.cpu_count()} cores visible"
    )
    if args.only in (None, "jobs"):
        compare_jobs(config, args.repeat)
    if args.only in (None, "launchers"):
        print(f"launchers: {cells} cells on 2 CPUs (--jobs 2, ray num_cpus=2, 2 array tasks)")
        compare_launchers(config, args.repeat)
    if args.only in (None, "commands"):
        print(f"fresh probe sweep commands: {cells} cells on 2 CPUs, each command from its start")
        compare_commands(args.steps, args.repeat)


def compare_jobs(config: SweepConfig, repeat: int) -> None:
    """--jobs 1 against --jobs 2."""
    cells = len(config.cells())
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = SweepConfig.from_dict({**vars(config), "n": [16], "variants": {"none": {}}})
        timed(warm, 1, root)  # imports and first-call costs, not counted
        best: dict[int, float] = {}
        seen: dict[int, list[tuple]] = {}
        for i in range(repeat):
            for jobs in (1, 2):
                seconds, rows = timed(config, jobs, root)
                print(
                    f"  run {i + 1}, --jobs {jobs}: {seconds:.1f} s ({seconds / cells:.2f} s/cell)"
                )
                best[jobs] = min(best.get(jobs, seconds), seconds)
                seen[jobs] = metrics(rows)
    same = seen[1] == seen[2]
    print(f"same metrics with --jobs 1 and --jobs 2: {'yes' if same else 'NO'}")
    print(f"sweep jobs1: {best[1]:.1f} s, jobs2: {best[2]:.1f} s (best of {repeat})")
    print(f"sweep jobs2/jobs1 speedup: {best[1] / best[2]:.2f}")


if __name__ == "__main__":
    main()
