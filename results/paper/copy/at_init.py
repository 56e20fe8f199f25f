"""Copy before any training: the paper model's test error on unseen symbols at init.

The official tied-embedding model reads ``final_ln(h) @ E.T``. Read at the input's own
last token (pool "final"), h starts as the symbol's own embedding E[a] plus its
position and the blocks' updates, so the tied read-out already points at a: the
untrained model copies. Read at an appended token (pool "cls"), h holds the symbol
only through attention, and at init it does not copy. This script measures both,
with the cells' own data, model and readout (probe.train.setup, probe.models.build):
the settings of recipes/paper/copy.yaml at n = 8 (the test set does not depend on
n: 1000 samples on an unseen alphabet), seeds 0-2. Rows go to ``at_init.jsonl``.

    python results/paper/copy/at_init.py      # ~1 min on one core
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from probe.experiments.cells import cell_configs  # noqa: E402
from probe.experiments.sweep import SweepConfig  # noqa: E402
from probe.jsonl import append_row  # noqa: E402
from probe.models.build import readout  # noqa: E402
from probe.train.metrics import load_metric  # noqa: E402
from probe.train.plan import plan_run  # noqa: E402
from probe.train.setup import build_run_model, load_run_data  # noqa: E402

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parents[2] / "recipes" / "paper" / "copy.yaml"
OUT = HERE / "at_init.jsonl"


@torch.no_grad()
def test_error(config) -> dict[str, float]:
    plan = plan_run(config)
    data = load_run_data(plan)
    model, _ = build_run_model(plan, data)
    model.eval()
    test = data.splits["test"]
    metric = load_metric(data.label_kind)
    logits = readout(model, test["input_ids"], test["attention_mask"])
    metric.add_batch(predictions=logits.numpy(), references=test["labels"].numpy())
    return metric.compute()


def main() -> None:
    torch.set_num_threads(1)
    recipe = SweepConfig.from_yaml(RECIPE)
    cells = [c for c in recipe.cells() if c.n == 8]
    configs = cell_configs(recipe, cells, "runs/at_init")
    OUT.unlink(missing_ok=True)
    for cell in cells:
        config = configs[cell.key]
        if config.ab != "none":  # a, b = 0 at init: the + VO model is the plain one
            continue
        result = test_error(config)
        row = {"variant": cell.variant, "n_embd": config.n_embd, "seed": cell.seed, **result}
        append_row(OUT, row)
        print(cell.variant, cell.seed, round(result["error"], 3), flush=True)


if __name__ == "__main__":
    main()
