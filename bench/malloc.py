"""glibc malloc settings on wide models (``probe.train.malloc.tune_malloc``), in CPU time.

One ``finetune`` of the paper model on ``copy`` (symbolic: the answer is scored over
the whole vocabulary, so the tied [vocab, width] embedding's gradient is large) at each
``--widths``, ``--n`` training samples (n symbols), batch 64, ``--steps`` steps, one
thread, in a fresh process per side (malloc's settings are process-wide):

- ``default``: glibc's own (``PROBE_MALLOC=default``);
- ``mallopt``: ``tune_malloc`` (mmap threshold fixed at 32 MiB, trim threshold 1 GiB);
- ``thp``: the same plus ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (malloc asks for
  transparent huge pages; the kernel's THP setting must be ``madvise`` or ``always``).

Each side's training loop is timed in its thread's CPU time (``time.thread_time``,
system time of page faults included) beside wall time, with its minor page faults
(``getrusage``). Sides alternate over ``--repeat`` rounds (order rotated), best round
of each counts. Prints per width ``mallopt/default`` and ``thp/default`` (CPU time
ratios; > 1: the setting pays) and the page faults per step.

    python bench/malloc.py [--widths 512,1024] [--n 8192] [--steps 20] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SIDES = ("default", "mallopt", "thp")


def child(width: int, n: int, steps: int) -> None:
    import resource
    import time

    import torch

    from probe.train import loop
    from probe.train.config import FinetuneConfig
    from probe.train.run import finetune

    torch.set_num_threads(1)
    original, seen = loop.train, {}

    def timed(*a, **k):
        f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        c, w = time.thread_time(), time.perf_counter()
        try:
            return original(*a, **k)
        finally:
            seen.update(
                cpu=time.thread_time() - c,
                wall=time.perf_counter() - w,
                faults=resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f,
            )

    loop.train = timed
    with tempfile.TemporaryDirectory() as out:
        finetune(
            FinetuneConfig(
                model="paper",
                task="copy",
                n_layer=2,
                n_embd=width,
                n_train=n,
                n_val=0,
                n_test=64,
                batch_size=64,
                max_steps=steps,
                converge_loss=0.0,
                progress=False,
                checkpoints=False,
                output_dir=out,
            )
        )
    print(json.dumps(seen))


def run_side(side: str, width: int, n: int, steps: int) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("GLIBC_TUNABLES", None)
    if side == "default":
        env["PROBE_MALLOC"] = "default"
    else:
        env.pop("PROBE_MALLOC", None)
    if side == "thp":
        env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    code = (
        "import sys; sys.argv[1:] = []; "
        "from probe.train.malloc import tune_malloc; "
        f"{'tune_malloc(); ' if side != 'default' else ''}"
        f"sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
        f"from malloc import child; child({width}, {n}, {steps})"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="512,1024")
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--sides", default=",".join(SIDES))
    args = parser.parse_args()
    sides = args.sides.split(",")
    for width in (int(w) for w in args.widths.split(",")):
        best: dict[str, dict] = {}
        for r in range(args.repeat):
            for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                got = run_side(side, width, args.n, args.steps)
                if side not in best or got["cpu"] < best[side]["cpu"]:
                    best[side] = got
        for side, got in best.items():
            print(
                f"width {width} n {args.n} {side:8s}: {1e3 * got['cpu'] / args.steps:.1f} ms "
                f"cpu/step ({1e3 * got['wall'] / args.steps:.1f} wall), "
                f"{got['faults'] / args.steps:.0f} page faults/step"
            )
        for side in sides:
            if side != "default" and "default" in best:
                ratio = best["default"]["cpu"] / best[side]["cpu"]
                print(f"{side}/default: {ratio:.2f}  (width {width}, cpu time)")


if __name__ == "__main__":
    main()
