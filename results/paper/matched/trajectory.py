"""A plain cell of the matched protocol rerun with its loss on unseen symbols logged
during training.

At n 512-4096 every plain cell of the matched same_different and aba_vs_abb grids ends
fitting its training set (train loss <= 1.1e-3) with its test loss near 1
(results.jsonl; REPORT section 9). Did it never generalize, or did it generalize and
then lose it over its 1000 epochs? This script reruns one of the grid's own cells
(``--recipe``, default recipes/paper/matched/same_different.yaml; ``--variant none``,
``--n 2048``: the paper's n*, ``--seed 0``) with validation every 2,000 steps (the
validation alphabet, like the test one, unseen in training), and appends the curve to
``trajectory.jsonl`` beside this script (rows keyed by task, variant, n and seed):
per logged step the training loss (the mean over the last logged steps), validation
loss and error, then the final row's test loss beside the sweep's own row for the
same cell; ``trajectory.png`` plots every cell in the file (``--plot``: only that). The two need not agree: the
sweep's row may have run eagerly at an earlier commit (before probe compiled long
runs' steps; n 2048 compiles by default now), and past a fitted training set float
rounding moves where the run ends. A cell already in the file is refused (delete its
lines to rerun it).

    python results/paper/matched/trajectory.py   # ~10 min on one core
    python results/paper/matched/trajectory.py \\
        --recipe recipes/paper/matched/aba_vs_abb.yaml --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from probe.experiments.cells import cell_configs  # noqa: E402
from probe.experiments.sweep import SweepConfig  # noqa: E402
from probe.jsonl import append_row, read_rows  # noqa: E402
from probe.train.run import finetune  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
OUT = HERE / "trajectory.jsonl"
PLOT = HERE / "trajectory.png"
EVERY = 2000
KEY = ("task", "variant", "n", "seed")


def plot() -> None:
    """Validation loss (unseen symbols, solid) and training loss (dotted) per step, one
    colour per cell of ``trajectory.jsonl``, the 0.05 threshold dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple, list[dict]] = {}
    for r in read_rows([OUT]):
        if "val_loss" in r:
            curves.setdefault(tuple(r[k] for k in KEY), []).append(r)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (cell, rows) in enumerate(sorted(curves.items())):
        steps = [r["step"] for r in rows]
        label = "{} {} n={} seed={}".format(*cell)
        ax.plot(steps, [r["val_loss"] for r in rows], color=f"C{i}", label=label)
        ax.plot(steps, [r["train_loss"] for r in rows], color=f"C{i}", linestyle=":")
    ax.axhline(0.05, color="grey", linestyle="--", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss: unseen symbols (solid), training (dotted)")
    ax.set_title("matched protocol, plain: the loss on unseen symbols during training")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOT, dpi=120)
    plt.close(fig)


def main() -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/paper/matched/same_different.yaml")
    parser.add_argument("--variant", default="none")
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", action="store_true", help="only redraw trajectory.png")
    args = parser.parse_args()
    if args.plot:
        plot()
        return
    torch.set_num_threads(1)
    recipe_path = ROOT / args.recipe
    recipe = SweepConfig.from_yaml(recipe_path)
    key = {"task": recipe.task, "variant": args.variant, "n": args.n, "seed": args.seed}
    done = OUT.exists() and any(
        all(r.get(k) == v for k, v in key.items()) for r in read_rows([OUT])
    )
    if done:
        raise SystemExit(f"{OUT} already holds {key}: delete its lines to rerun it")
    cells = [
        c for c in recipe.cells() if (c.variant, c.n, c.seed) == (args.variant, args.n, args.seed)
    ]
    if len(cells) != 1:
        raise SystemExit(
            f"{args.recipe} has no cell variant={args.variant} n={args.n} seed={args.seed}; "
            f"its variants: {sorted({c.variant for c in recipe.cells()})}, n: {recipe.n}"
        )
    (cell,) = cells
    with tempfile.TemporaryDirectory() as work:
        config = cell_configs(recipe, [cell], work)[cell.key]
        config = dataclasses.replace(
            config, eval_every=EVERY, log_every=EVERY, log_with="tensorboard", progress=True
        )
        row = finetune(config)
        events = EventAccumulator(str(Path(config.output_dir) / "logs" / "probe"))
        events.Reload()
        scalars = {
            tag: {e.step: e.value for e in events.Scalars(tag)}
            for tag in events.Tags()["scalars"]
            if tag in ("train_loss", "val_loss", "val_error")
        }
    for step in sorted({s for values in scalars.values() for s in values}):
        append_row(OUT, {**key, "step": step, **{t: v.get(step) for t, v in scalars.items()}})
    results = ROOT / "results" / "paper" / "matched" / recipe.name
    swept = [
        r
        for r in read_rows([results / "results.jsonl"])
        if all(r.get(k) == v for k, v in key.items() if k != "task")
    ]
    append_row(
        OUT,
        {
            **key,
            "step": row["steps"],
            "final_test_loss": row["test_loss"],
            "final_train_loss": row.get("train_loss"),
            "sweep_test_loss": swept[-1]["test_loss"] if swept else None,
        },
    )
    for r in read_rows([OUT]):
        if all(r.get(k) == v for k, v in key.items()):
            print(r, flush=True)
    plot()


if __name__ == "__main__":
    main()
