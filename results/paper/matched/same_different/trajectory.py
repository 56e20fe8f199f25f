"""Same / different, plain, matched protocol: the loss on unseen symbols during training.

At n 512-4096 every plain cell of this grid ends fitting its training set (train loss
<= 1.1e-3) with its test loss near 1 (results.jsonl; REPORT section 9). Did it never
generalize, or did it generalize and then memorize over its 1000 epochs? This script
reruns the grid's own cell (recipes/paper/matched/same_different.yaml, variant
``none``, n 2048, seed 0: the paper's n*) with validation every 2,000 steps (the
validation alphabet, like the test one, unseen in training), and writes the curve to
``trajectory.jsonl``: step, training loss (the mean over the last logged steps) and
validation loss and error, then the final row's test loss beside the sweep's own row
for the same cell. The two need not agree: the sweep's row ran eagerly at an earlier
commit (before probe compiled long runs' steps; this run compiles, as n 2048 now does by
default), and past a fitted training set float rounding moves where the run ends.

    python results/paper/matched/same_different/trajectory.py   # ~10 min on one core
"""

from __future__ import annotations

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
RECIPE = HERE.parents[3] / "recipes" / "paper" / "matched" / "same_different.yaml"
OUT = HERE / "trajectory.jsonl"
CELL = {"variant": "none", "n": 2048, "seed": 0}
EVERY = 2000


def main() -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    torch.set_num_threads(1)
    recipe = SweepConfig.from_yaml(RECIPE)
    (cell,) = [c for c in recipe.cells() if all(getattr(c, k) == v for k, v in CELL.items())]
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
    OUT.unlink(missing_ok=True)
    for step in sorted({s for values in scalars.values() for s in values}):
        append_row(OUT, {"step": step, **{t: v.get(step) for t, v in scalars.items()}})
    swept = [
        r
        for r in read_rows([HERE / "results.jsonl"])
        if all(r.get(k) == v for k, v in CELL.items())
    ]
    append_row(
        OUT,
        {
            "step": row["steps"],
            "final_test_loss": row["test_loss"],
            "final_train_loss": row.get("train_loss"),
            "sweep_test_loss": swept[-1]["test_loss"] if swept else None,
        },
    )
    for r in read_rows([OUT]):
        print(r, flush=True)


if __name__ == "__main__":
    main()
