"""Several cells in one step: ``probe sweep --pack K`` (``probe.train.pack``) against K
lone runs, through the real code on both sides, in CPU time.

The paper's model (``--model paper``: GPT-2 made the official template-task
transformer, dropout 0, d_head 64) at each ``--widths`` (2 layers, batch 64,
``aba_vs_abb``, the paper protocol's lr 1e-3 for every tensor, a and b included).
Two grids: ``--grid seeds`` (K seeds of one ``--ab`` variant) and ``--grid variants``
(the default: the paper's 4 variants, plain / + KQ / + VO / + KQ,VO, × ``--seeds``
seeds, K = 4 × seeds, one pack: the cells lacking a term hold it at 0). Lone: K
``finetune`` runs of ``--steps`` steps each; packed: one ``finetune_packed`` of the same
K cells.

Each side is timed over its training loop only (lone: ``probe.train.loop.train``;
packed: the pack's step, its cells' batches and the stack's slicing), set-up and
evaluation, the same on both sides, left out, in the calling thread's CPU time
(``time.thread_time``, one thread) beside wall time: on a machine shared with other
work the CPU time of one's own thread barely moves while wall time does. The sides
alternate (lone first, then packed first) over ``--repeat`` rounds and the best round
of each counts. Before timing, the bench checks that the two sides reached the same
test losses. Prints per width ``pack<K>/lone: <x>`` (lone CPU time / packed CPU time,
per cell; > 1: packing pays) and the same ratio in wall time.

``--compiled``: both sides compile their step, as every lone cell and every pack of
cells of ``COMPILE_MIN_STEPS`` steps or more does by default
(``probe.train.loop.compiles``: a paper-protocol cell of n >= 2048), so it answers
whether ``--pack`` pays on a grid of long cells. Both sides are then timed in their
steady state: the CPU time from the end of a cell's (or the pack's) second step to the
end of its last (the compile's warm-up, paid once per shape, left out; ``--steps``
should then be a few hundred). Prints ``pack<K>/lone (compiled)``.

``--matmuls``: what bounds a pack from above. Every matrix product of one lone training
step (forward and backward, their shapes recorded from a real ``finetune`` step) timed
three ways in CPU time: one operand set multiplied again and again (a lone cell, its
operands in cache), K distinct operand sets one ``mm`` each, and one ``bmm`` over the K
(what the pack's ``vmap`` runs). Prints ``matmuls K distinct/reused`` and
``matmuls bmm<K>/reused`` (rates; < 1: a pack's products run slower per cell than a
lone cell's, the K operand sets no longer fit in cache).

    python bench/pack.py [--grid variants] [--seeds 3] [--k 16] [--widths 128]
                         [--steps 40] [--repeat 3] [--threads 1] [--task aba_vs_abb]
                         [--ab kq,vo] [--compiled] [--matmuls]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from probe.train import loop  # noqa: E402
from probe.train import pack as pack_module  # noqa: E402
from probe.train.config import FinetuneConfig  # noqa: E402
from probe.train.pack import finetune_packed  # noqa: E402
from probe.train.run import finetune  # noqa: E402

VARIANTS = ("none", "kq", "vo", "kq,vo")  # the paper's four


def cells(
    out: str,
    k: int,
    width: int,
    steps: int,
    tag: str,
    task: str = "aba_vs_abb",
    ab: str = "kq,vo",
    variants: tuple[str, ...] | None = None,
    compile_step: bool | None = None,
) -> list[FinetuneConfig]:
    """K cells: K seeds of ``ab``, or with ``variants`` each variant × K // len seeds."""
    grid = (
        [(ab, seed) for seed in range(k)]
        if variants is None
        else [(v, seed) for v in variants for seed in range(k // len(variants))]
    )
    return [
        FinetuneConfig(
            model="paper",
            task=task,
            ab=variant,
            n_layer=2,
            n_embd=width,
            n_train=1024,
            n_val=0,
            n_test=64,
            batch_size=64,
            lr=1e-3,
            a_lr=1e-3,
            b_lr=1e-3,
            max_steps=steps,
            converge_loss=0.0,
            seed=seed,
            progress=False,
            checkpoints=False,
            compile=compile_step,
            output_dir=os.path.join(out, f"{tag}{width}-{variant}-{seed}"),
        )
        for variant, seed in grid
    ]


class Clock:
    """CPU time (this thread) and wall time spent inside the wrapped calls."""

    def __init__(self):
        self.cpu = self.wall = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            c, w = time.thread_time(), time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.cpu += time.thread_time() - c
                self.wall += time.perf_counter() - w

        return timed


@contextlib.contextmanager
def timing(clock, *targets: tuple[object, str]):
    """Every ``(owner, name)`` replaced by ``clock.wrap`` of it (its timed version, or
    any wrapper with that method) for the block."""
    saved = [(owner, name, getattr(owner, name)) for owner, name in targets]
    for owner, name, fn in saved:
        setattr(owner, name, clock.wrap(fn))
    try:
        yield clock
    finally:
        for owner, name, fn in saved:
            setattr(owner, name, fn)


class Steady:
    """CPU time (this thread) from the end of each run's ``SKIP``-th step to the end of
    its last: the intervals between consecutive step ends, summed past the first
    ``SKIP`` steps (the first holds a compiled step's warm-up). ``cpu`` is the sum over
    runs; wall time likewise."""

    SKIP = 2  # steps left out of every run

    def __init__(self):
        self.cpu = self.wall = 0.0
        # id(run) -> (the run, steps ended, cpu and wall time at the last end); holding the
        # run keeps its id from being reused by a later one
        self.last: dict[int, tuple[object, int, float, float]] = {}

    def wrap(self, fn):
        def timed(owner, *args, **kwargs):
            out = fn(owner, *args, **kwargs)
            c, w = time.thread_time(), time.perf_counter()
            _, steps, c0, w0 = self.last.get(id(owner), (owner, 0, c, w))
            if steps >= self.SKIP:
                self.cpu += c - c0
                self.wall += w - w0
            self.last[id(owner)] = (owner, steps + 1, c, w)
            return out

        return timed


def run_lone(configs) -> tuple[list[dict], Clock]:
    with timing(Clock(), (loop, "train")) as clock:
        rows = [finetune(c) for c in configs]
    return rows, clock


def run_packed(configs) -> tuple[dict, Clock]:
    targets = (
        (pack_module._PackedStep, "__call__"),
        (pack_module._PackedStep, "keep"),
        (pack_module._Cell, "next_batch"),
    )
    with timing(Clock(), *targets) as clock:
        rows = dict(finetune_packed(configs))
    return rows, clock


def steady_lone(configs) -> tuple[list[dict], Steady]:
    clock = Steady()
    with timing(clock, (loop.TrainState, "stepped")):
        rows = [finetune(c) for c in configs]
    return rows, clock


def steady_packed(configs) -> tuple[dict, Steady]:
    clock = Steady()
    with timing(clock, (pack_module._PackedStep, "__call__")):
        rows = dict(finetune_packed(configs))
    return rows, clock


def measure(
    k: int,
    width: int,
    steps: int,
    repeat: int = 1,
    variants=None,
    compiled: bool = False,
    **task,
) -> float:
    """pack<k>/lone at one width: the lone runs' summed loop CPU time over the pack's,
    best round of each side (``compiled``: both sides compiled, timed in their
    steady state, :class:`Steady`)."""
    if compiled and steps <= Steady.SKIP:
        raise ValueError(f"--compiled times steps past the second: --steps {steps} leaves none")
    best = {"lone": (float("inf"), float("inf")), "pack": (float("inf"), float("inf"))}
    gap = 0.0
    with tempfile.TemporaryDirectory() as out:
        for r in range(repeat):
            order = ("lone", "pack") if r % 2 == 0 else ("pack", "lone")
            for side in order:
                configs = cells(
                    out,
                    k,
                    width,
                    steps,
                    f"{side}{r}-",
                    variants=variants,
                    compile_step=True if compiled else None,
                    **task,
                )
                if side == "lone":
                    lone, clock = (steady_lone if compiled else run_lone)(configs)
                else:
                    packed, clock = (steady_packed if compiled else run_packed)(configs)
                best[side] = min(best[side], (clock.cpu, clock.wall))
            gap = max(
                gap,
                max(
                    abs(packed[i]["test_loss"] - row["test_loss"]) / row["test_loss"]
                    for i, row in enumerate(lone)
                ),
            )
    (lone_cpu, lone_wall), (pack_cpu, pack_wall) = best["lone"], best["pack"]
    grid = f"{len(variants)} variants x {k // len(variants)} seeds" if variants else f"{k} seeds"
    timed = steps - Steady.SKIP if compiled else steps
    label = " (compiled)" if compiled else ""
    print(
        f"width {width} ({grid}){label}: lone {1e3 * lone_cpu / (k * timed):.2f} ms CPU/step "
        f"per cell, packed {1e3 * pack_cpu / (k * timed):.2f} ms CPU/step per cell, best of "
        f"{repeat} alternated rounds"
        + (f", steps 3-{steps} (steady state)" if compiled else "")
        + f" (test losses within {gap:.1e})"
    )
    print(f"pack{k}/lone{label}: {lone_cpu / pack_cpu:.2f}  (width {width}, cpu time)")
    print(f"pack{k}/lone{label} (wall): {lone_wall / pack_wall:.2f}")
    return lone_cpu / pack_cpu


def step_matmuls(config: FinetuneConfig) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The operand shapes of every matrix product (``mm``, ``addmm``, ``bmm``) of one
    training step of ``config``'s lone run, forward and backward, recorded from a real
    ``finetune`` of one step (its evaluation left out)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    aten = torch.ops.aten
    products = {aten.mm.default: (0, 1), aten.addmm.default: (1, 2), aten.bmm.default: (0, 1)}
    shapes: list[tuple[tuple[int, ...], tuple[int, ...]]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in products:
                i, j = products[func]
                shapes.append((tuple(args[i].shape), tuple(args[j].shape)))
            return func(*args, **(kwargs or {}))

    class Recorder:  # as a Clock for timing(): the wrapped call runs under Record
        def wrap(self, fn):
            def recorded(*args, **kwargs):
                with Record():
                    return fn(*args, **kwargs)

            return recorded

    with timing(Recorder(), (loop, "train")):
        finetune(dataclasses.replace(config, max_steps=1))
    return shapes


def measure_matmuls(k: int, width: int, repeat: int = 5, **task) -> tuple[float, float]:
    """The products of one lone step at ``width``, timed reused, over K distinct operand
    sets, and as one bmm over K; prints and returns (distinct/reused, bmm/reused), rates."""
    with tempfile.TemporaryDirectory() as out:
        shapes = step_matmuls(cells(out, 1, width, 1, "shapes-", **task)[0])

    def best(fn) -> float:
        fn()  # first touch
        return min(_cpu(fn) for _ in range(repeat))

    reused = distinct = batched = 0.0
    for a_shape, b_shape in shapes:
        lone, each, stacked = _three_ways(a_shape, b_shape, k)
        reused += k * best(lone)
        distinct += best(each)
        batched += best(stacked)
    print(
        f"width {width}: the {len(shapes)} products of one lone step, x{k}: reused operands "
        f"{1e3 * reused:.2f} ms CPU, {k} distinct sets {1e3 * distinct:.2f} ms, "
        f"bmm{k} {1e3 * batched:.2f} ms (best of {repeat})"
    )
    print(f"matmuls {k} distinct/reused: {reused / distinct:.2f}  (width {width}, rate)")
    print(f"matmuls bmm{k}/reused: {reused / batched:.2f}  (width {width}, rate)")
    return reused / distinct, reused / batched


def _three_ways(a_shape: tuple[int, ...], b_shape: tuple[int, ...], k: int):
    """One product of these shapes as three calls: once on one operand set (call it K
    times for K cells), once on each of K distinct sets, and one bmm over the K sets
    stacked (a product that is a bmm already, the attention's core, stacks along its
    batch)."""
    op = torch.mm if len(a_shape) == 2 else torch.bmm
    a1, b1 = torch.randn(*a_shape), torch.randn(*b_shape)
    a_sets = [torch.randn(*a_shape) for _ in range(k)]
    b_sets = [torch.randn(*b_shape) for _ in range(k)]
    join = torch.stack if len(a_shape) == 2 else torch.cat
    a_k, b_k = join(a_sets), join(b_sets)
    return (
        lambda: op(a1, b1),
        lambda: [op(a, b) for a, b in zip(a_sets, b_sets, strict=True)],
        lambda: torch.bmm(a_k, b_k),
    )


def _cpu(fn, calls: int = 20) -> float:
    """CPU time (this thread) of one call of ``fn``, the mean of ``calls``."""
    start = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", choices=("variants", "seeds"), default="variants")
    parser.add_argument("--seeds", type=int, default=3, help="--grid variants: seeds each")
    parser.add_argument("--k", type=int, default=16, help="--grid seeds: cells")
    parser.add_argument("--widths", default="128")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--task", default="aba_vs_abb", help="e.g. majority_k:k=6")
    parser.add_argument("--ab", default="kq,vo", help="--grid seeds: the variant")
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="both sides compile their step (long cells' default); timed past step 2",
    )
    parser.add_argument(
        "--matmuls",
        action="store_true",
        help="time one lone step's products reused, over K operand sets and as one bmm",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = VARIANTS if args.grid == "variants" else None
    k = len(VARIANTS) * args.seeds if variants else args.k
    for width in (int(w) for w in args.widths.split(",")):
        if args.matmuls:
            measure_matmuls(k, width, task=args.task, ab=args.ab)
            continue
        measure(
            k,
            width,
            args.steps,
            args.repeat,
            variants,
            args.compiled,
            task=args.task,
            ab=args.ab,
        )


if __name__ == "__main__":
    main()
