"""results/attention: what the heads of a plain and a + KQ transformer attend to on unseen symbols.

Trains probe's default model (GPT-2 architecture from scratch, 2 layers, width 128,
4 heads, FinetuneConfig's defaults) on ``aba_vs_abb`` with n = 256 training samples,
plain and with the KQ identity scalings, seeds 0 and 1; then runs
``probe.attention_scores`` on 512 test samples (symbols never seen in training) and
writes, per run, ``attention.csv`` and the heatmaps (``probe attention``), and
``summary.csv``: test loss, the learned a per head and each head's scores.

    python results/attention/make.py     # ~2 min on one core
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import probe  # noqa: E402
from probe.cli.attention import main as attention_cli  # noqa: E402
from probe.train.config import FinetuneConfig  # noqa: E402

HERE = Path(__file__).resolve().parent
SEEDS = (0, 1)
VARIANTS = {"plain": "none", "kq": "kq"}


def main() -> None:
    torch.set_num_threads(1)
    tables = []
    with tempfile.TemporaryDirectory() as runs:
        for label, ab in VARIANTS.items():
            for seed in SEEDS:
                run = Path(runs) / f"{label}-seed{seed}"
                config = FinetuneConfig(
                    task="aba_vs_abb",
                    ab=ab,
                    n_train=256,
                    n_test=1000,
                    seed=seed,
                    output_dir=str(run),
                    save_model=True,
                    checkpoints=False,
                    progress=False,
                )
                row = probe.finetune(config)
                out = HERE / f"{label}-seed{seed}"
                attention_cli(["--model", str(run), "--out", str(out), "--max-samples", "512"])
                df = pd.read_csv(out / "attention.csv")
                if ab != "none":
                    a = probe.ab_values(probe.load_injected(run / "model"))
                    df = df.merge(a[["layer", "head", "a"]], on=["layer", "head"])
                df.insert(0, "variant", label)
                df.insert(1, "seed", seed)
                df.insert(2, "test_loss", round(row["test_loss"], 4))
                tables.append(df)
    summary = pd.concat(tables, ignore_index=True)
    summary.to_csv(HERE / "summary.csv", index=False, float_format="%.4f")
    print(summary.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
