"""Several cells in one step: ``probe sweep --pack K`` (``probe.train.pack``) against K
lone runs, through the real code on both sides.

The paper's model (``--model paper``: GPT-2 made the official template-task
transformer, dropout 0, d_head 64) at each ``--widths`` (2 layers, batch 64,
``aba_vs_abb``), K seeds. Lone: K ``finetune`` runs of ``--steps`` steps each; packed:
one ``finetune_packed`` of the same K cells. Each side's time is its training loop's
(the rows' ``train_s``: the lone runs' sum, the pack's longest), so set-up and
evaluation, the same on both sides, are left out. Before timing, the bench checks
that the two sides reached the same test losses. Prints per width ``pack<K>/lone:
<x>``, the per-cell throughput ratio (lone time / packed time; > 1: packing pays).

    python bench/pack.py [--k 16] [--widths 64,128,256,512] [--steps 40] [--threads 1]
                         [--task aba_vs_abb] [--ab kq,vo]
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from probe.train.config import FinetuneConfig  # noqa: E402
from probe.train.pack import finetune_packed  # noqa: E402
from probe.train.run import finetune  # noqa: E402


def cells(
    out: str, k: int, width: int, steps: int, tag: str, task: str = "aba_vs_abb", ab: str = "kq,vo"
) -> list[FinetuneConfig]:
    return [
        FinetuneConfig(
            model="paper",
            task=task,
            ab=ab,
            n_layer=2,
            n_embd=width,
            n_train=1024,
            n_val=0,
            n_test=64,
            batch_size=64,
            max_steps=steps,
            converge_loss=0.0,
            seed=seed,
            progress=False,
            checkpoints=False,
            output_dir=os.path.join(out, f"{tag}{width}-{seed}"),
        )
        for seed in range(k)
    ]


def measure(k: int, width: int, steps: int, **task) -> float:
    """pack<k>/lone at one width: the lone runs' summed train_s over the pack's."""
    with tempfile.TemporaryDirectory() as out:
        lone = [finetune(c) for c in cells(out, k, width, steps, "lone", **task)]
        packed = dict(finetune_packed(cells(out, k, width, steps, "pack", **task)))
    gap = max(
        abs(packed[i]["test_loss"] - r["test_loss"]) / r["test_loss"] for i, r in enumerate(lone)
    )
    lone_s = sum(r["train_s"] for r in lone)
    pack_s = max(r["train_s"] for r in packed.values())
    print(
        f"width {width}: lone {1e3 * lone_s / (k * steps):.2f} ms/step per cell, packed "
        f"{1e3 * pack_s / (k * steps):.2f} ms/step per cell (test losses within {gap:.1e})"
    )
    print(f"pack{k}/lone: {lone_s / pack_s:.2f}  (width {width})")
    return lone_s / pack_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--widths", default="64,128,256,512")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--task", default="aba_vs_abb", help="e.g. majority_k:k=6")
    parser.add_argument("--ab", default="kq,vo")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for width in (int(w) for w in args.widths.split(",")):
        measure(args.k, width, args.steps, task=args.task, ab=args.ab)


if __name__ == "__main__":
    main()
