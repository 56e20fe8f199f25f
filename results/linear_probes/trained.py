"""results/linear_probes/trained.csv: linear probes of a small transformer trained from
scratch on aba_vs_abb, plain and with the KQ identity (+ KQ), per layer.

The model of REPORT section 1 (GPT-2 from scratch, 2 layers, width 128, 4 heads, probe's
defaults: AdamW lr 1e-3, a at 0.01, at most 1000 steps) is trained with
``probe.finetune`` on n = 256 rows of aba_vs_abb (seeds 0, 1, 2), saved, loaded back
(``probe.load_injected``: the a X Xᵀ term included) and probed on its own data: the
probe is fit on the hidden states of the 256 training rows (symbols the model was
trained on) and scored on 256 test rows of unseen symbols. Does + KQ make the relation
linearly readable earlier? Controls as in make.py (random weights: the from-scratch
draw under the seed, without training; labels permuted across rows).

    OMP_NUM_THREADS=1 python results/linear_probes/trained.py
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = {"plain": "none", "+ KQ": "kq"}
SEEDS = (0, 1, 2)


def main() -> None:
    import probe
    from probe.train.plan import plan_run
    from probe.train.setup import run_dataset

    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in SEEDS:
            for variant, ab in VARIANTS.items():
                out = f"{work}/{ab}-{seed}"
                config = probe.FinetuneConfig(
                    task="aba_vs_abb",
                    ab=ab,
                    n_train=256,
                    n_val=0,
                    n_test=256,
                    seed=seed,
                    save_model=True,
                    progress=False,
                    output_dir=out,
                )
                row = probe.finetune(config)
                model = probe.load_injected(out + "/model")
                df = probe.linear_probe(model, run_dataset(plan_run(config)), seed=seed)
                df.insert(0, "seed", seed)
                df.insert(0, "variant", variant)
                df["model_test_loss"] = row["test_loss"]
                df["model_test_error"] = row["test_error"]
                df["steps"] = row["steps"]
                print(df.round(3).to_string(index=False), flush=True)
                rows.append(df)
    df = pd.concat(rows, ignore_index=True)
    df.to_csv(HERE / "trained.csv", index=False)


if __name__ == "__main__":
    main()
