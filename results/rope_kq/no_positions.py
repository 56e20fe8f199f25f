"""The control for results/rope_kq: GPT-2 without absolute positions in its residual stream.

RoPE models carry position only inside q·k; their values, and so every attention
output, carry none. GPT-2 adds learned position embeddings to X. If the KQ term
works in GPT-2 because the value it attends to says *where* the equal (or the
different) symbol is, GPT-2 with its position embeddings zeroed and frozen should
lose the effect as Llama does; if it keeps it, positions are not the cause.

Runs probe's own finetune (the settings of recipes/base.yaml: 2 layers, width
128, 4 heads, aba_vs_abb, n = 256, seeds 0-2, plain and + KQ) with one change,
made by wrapping ``probe.train.setup.build_run_model``: ``transformer.wpe`` set to
zero and frozen after the model is built. Rows go to ``no_positions.jsonl``.

    python results/rope_kq/no_positions.py     # ~2 min on one core
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import probe.train.run as run  # noqa: E402
from probe.jsonl import append_row  # noqa: E402
from probe.train import setup  # noqa: E402
from probe.train.config import FinetuneConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "no_positions.jsonl"


def without_positions(plan, data):
    model, trainable = setup.build_run_model(plan, data)
    wpe = model.transformer.wpe
    with torch.no_grad():
        wpe.weight.zero_()
    wpe.weight.requires_grad_(False)
    return model, trainable - wpe.weight.numel()


def main() -> None:
    torch.set_num_threads(1)
    run.build_run_model = without_positions  # finetune's own reference to the builder
    OUT.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for ab in ("none", "kq"):
            for seed in (0, 1, 2):
                config = FinetuneConfig(
                    task="aba_vs_abb", ab=ab, n_train=256, n_val=256, n_test=1000, seed=seed,
                    output_dir=f"{tmp}/{ab}-{seed}", checkpoints=False, progress=False,
                )  # fmt: skip
                row = run.finetune(config)
                row["variant"], row["change"] = ab, "wpe zeroed and frozen"
                append_row(OUT, row)
                print(ab, seed, round(row["test_loss"], 4), row["steps"], flush=True)


if __name__ == "__main__":
    main()
