"""How much faster a sweep runs with ``--jobs 2`` than with ``--jobs 1``.

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

    OMP_NUM_THREADS=1 python bench/sweep.py [--repeat 2] [--steps 150]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from probe.experiments.sweep import SweepConfig, run_sweep  # noqa: E402


def recipe(steps: int) -> SweepConfig:
    return SweepConfig.from_dict(
        {
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
    )


def timed(config: SweepConfig, jobs: int, root: Path) -> tuple[float, list[dict]]:
    out = Path(tempfile.mkdtemp(dir=root))
    t0 = time.perf_counter()
    rows = run_sweep(config, out / "results", work_dir=out / "work", jobs=jobs, progress=False)
    return time.perf_counter() - t0, rows


def metrics(rows: list[dict]) -> list[tuple]:
    return sorted((r["variant"], r["n"], r["seed"], r["test_loss"], r["steps"]) for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2, help="runs of each, best kept")
    parser.add_argument("--steps", type=int, default=150, help="training steps per cell")
    args = parser.parse_args()
    import torch

    config = recipe(args.steps)
    cells = len(config.cells())
    print(
        f"{cells} cells x {args.steps} steps; --jobs 1 with {torch.get_num_threads()} torch "
        f"thread(s), {os.cpu_count()} cores visible"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        warm = SweepConfig.from_dict({**vars(config), "n": [16], "variants": {"none": {}}})
        timed(warm, 1, root)  # imports and first-call costs, not counted
        best: dict[int, float] = {}
        seen: dict[int, list[tuple]] = {}
        for i in range(args.repeat):
            for jobs in (1, 2):
                seconds, rows = timed(config, jobs, root)
                print(
                    f"  run {i + 1}, --jobs {jobs}: {seconds:.1f} s ({seconds / cells:.2f} s/cell)"
                )
                best[jobs] = min(best.get(jobs, seconds), seconds)
                seen[jobs] = metrics(rows)
    same = seen[1] == seen[2]
    print(f"same metrics with --jobs 1 and --jobs 2: {'yes' if same else 'NO'}")
    print(f"sweep jobs1: {best[1]:.1f} s, jobs2: {best[2]:.1f} s (best of {args.repeat})")
    print(f"sweep jobs2/jobs1 speedup: {best[1] / best[2]:.2f}")


if __name__ == "__main__":
    main()
