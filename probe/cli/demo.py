"""``probe demo`` (``make demo``): the dataset, then the quickstart recipe.

First what a rendered template task holds: a few samples per split (text, ids,
label), the alphabet sizes, and the check that matters for the science: train,
validation and test symbols are disjoint, so the test split measures
generalization to symbols never seen in training. Then the quickstart,
``recipes/quickstart.yaml``: the paper's small transformer trained with and
without the KQ identity scalings at a few n, run by the sweep
(:func:`probe.experiments.sweep.run_sweep`) and summarized by the report's code
(:func:`probe.experiments.report.curves`, :func:`probe.experiments.report.n_star`): the test loss on
unseen symbols per n and variant, and n* per variant. The paper's finding: the
injected model generalizes from far fewer samples (about 32-64 for +KQ; the
plain transformer needs about 2048).

    probe demo                          # both
    probe demo --summary-only           # the dataset only
    probe demo --n 32 128 --seed 1      # fewer sample sizes, another seed
    probe demo --task copy              # show and train another catalogue task
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from probe.checks import count_arg
from probe.cli import entry_points

# shipped with the package (package data), so a wheel install finds it too;
# recipes/quickstart.yaml of a checkout includes it
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


NAME = "demo"
HELP = "a rendered dataset, then the quickstart recipe (plain vs +KQ)"
DESCRIPTION = __doc__.splitlines()[0].replace("``", "")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default=None,
        help="a catalogue task (see `probe tasks`), shown and trained (default: the recipe's)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the data and the runs (default: %(default)s)"
    )
    p.add_argument(
        "--show", type=count_arg(), default=3, help="samples shown per split (default: %(default)s)"
    )
    p.add_argument(
        "--summary-only", action="store_true", help="show the dataset, skip the training"
    )
    p.add_argument(
        "--n",
        type=count_arg(1),
        nargs="+",
        default=None,
        help="training sample sizes (default: the recipe's)",
    )
    p.add_argument(
        "--max-steps",
        type=count_arg(1),
        default=None,
        help="step budget per run (default: the recipe's)",
    )
    p.add_argument(
        "--n-test",
        type=count_arg(1),
        default=None,
        help="test samples, on unseen symbols (default: the recipe's)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="keep the sweep's results and runs in this (new) folder (default: a temporary one)",
    )
    p.add_argument(
        "--recipe",
        default=str(RECIPE),
        help="the recipe to run (default: the quickstart shipped with probe, "
        "probe/recipes/quickstart.yaml, which recipes/quickstart.yaml includes)",
    )


build_parser, add_parser, main = entry_points(__name__)


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Print the dataset summary, then (unless ``--summary-only``) run the recipe and
    print its table; returns the sweep's rows."""
    one_thread()
    config = quickstart_config(args)  # refuse bad options before the summary
    # the data of the grid's largest run, at the sizes the runs use
    settings = config.cell_settings(config.cells()[-1])
    summarize(
        args.task or _task_text(config),
        settings["n_train"],
        settings["n_test"],
        args.seed,
        args.show,
        n_val=settings["n_val"],
    )
    if args.summary_only:
        return []
    print()
    return run_quickstart(config, args.out)


def one_thread() -> None:
    """One torch thread, as the README's table was measured (``OMP_NUM_THREADS=1``):
    another thread count sums floats in another order, and the long plain runs drift."""
    import os

    import torch

    os.environ["OMP_NUM_THREADS"] = "1"  # and for any process the run starts
    torch.set_num_threads(1)


def quickstart_config(args: argparse.Namespace) -> Any:
    """The recipe as a :class:`probe.experiments.sweep.SweepConfig`, with the options applied."""
    from probe.experiments.sweep import SweepConfig

    config = SweepConfig.from_yaml(args.recipe)
    finetune = dict(config.finetune)
    if args.max_steps is not None:
        finetune["max_steps"] = args.max_steps
    if args.n_test is not None:
        finetune["n_test"] = args.n_test
    task, params = (config.task, config.task_params)
    if args.task:  # the task the summary shows, with its parameters (majority_k:k=5)
        from probe.tasks.catalogue import parse_task_spec

        task, params = parse_task_spec(args.task)
    return dataclasses.replace(
        config,
        task=task,
        task_params=params,
        n=sorted(args.n) if args.n else config.n,
        seeds=[args.seed],
        finetune=finetune,
    )


def _finetune_and_tell(config: Any) -> dict[str, Any]:
    """One cell's run, then its progress line (the variant is the cell folder's parent)."""
    from probe.train.run import finetune

    row = finetune(config)
    variant = Path(config.output_dir).parent.name
    print(
        f"  n={config.n_train:<5d} {variant:6s} test loss {row['test_loss']:.3f}  "
        f"({row['steps']} steps, {row['wall_s']:.0f}s)",
        flush=True,
    )
    return row


def run_quickstart(config: Any, out: str | None = None) -> list[dict[str, Any]]:
    """Run the recipe's grid with :func:`probe.experiments.sweep.run_sweep` into ``out`` (default: a
    temporary folder) and print its table."""
    from probe.experiments.sweep import run_sweep

    settings = config.cell_settings(config.cells()[0])
    shown = ", ".join(
        f"{v} ({', '.join(f'{k}={x}' for k, x in o.items())})" for v, o in config.variants.items()
    )
    print(
        f"recipe {config.name}, task {_task_text(config)}: {shown}; n {' '.join(map(str, config.n))}; "
        f"seed {' '.join(map(str, config.seeds))}\n  {_settings_line(settings)}\n"
        f"  one torch thread (OMP_NUM_THREADS=1), as the README's table",
        flush=True,
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out else Path(tmp)
        rows = run_sweep(
            config,
            folder / "results",
            work_dir=folder / "runs",
            runner=_finetune_and_tell,
            progress=False,
        )
        print()
        print(format_results(folder / "results", config))
    print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f}s")
    return rows


def _task_text(config: Any) -> str:
    params = ",".join(f"{k}={v}" for k, v in config.task_params.items())
    return f"{config.task}:{params}" if params else config.task


def _settings_line(settings: dict[str, Any]) -> str:
    keys = ["model", "n_layer", "n_embd", "n_head", "lr", "a_lr", "batch_size", "max_steps"]
    return ", ".join(f"{k}={settings[k]}" for k in keys if settings.get(k) is not None)


def format_results(results: str | Path, config: Any) -> str:
    """The sweep's results as text: test loss (error rate) per n and variant (means
    over seeds, from :func:`probe.experiments.report.curves`), then each variant's n*
    (:func:`probe.experiments.report.n_star`, at the recipe's threshold and baseline)."""
    from probe.experiments.report import curves, load_results, metric_of, n_star

    df = load_results([results])
    loss, error = (
        curves(df, m).pivot_table(index="n", columns="variant", values="mean")
        for m in ("test_loss", "test_error")
    )
    variants = [v for v in config.variants if v in loss.columns]
    width = 16
    n_test = int(df["test_samples"].iloc[0])
    seeds = int(df["seed"].nunique())
    lines = [
        f"test loss (error rate) on {n_test} samples of unseen symbols"
        + (f", mean over {seeds} seeds:" if seeds > 1 else ":"),
        f"{'n':>6}" + "".join(f"{v:>{width}}" for v in variants),
    ]
    for n in loss.index:
        cells = [
            f"{loss.loc[n, v]:.3f} ({error.loc[n, v]:.2f})"
            if loss.loc[n, v] == loss.loc[n, v]
            else "-"
            for v in variants
        ]
        lines.append(f"{n:>6}" + "".join(f"{c:>{width}}" for c in cells))
    metric = metric_of(df)
    table = n_star(curves(df, metric), config.threshold, config.baseline).set_index("variant")
    lines.append("")
    for v in variants:
        r = table.loc[v]
        ratio = (
            f", n* / n*({config.baseline}) {r['ratio_text']}"
            if r["ratio_text"] and v != config.baseline
            else ""
        )
        lines.append(f"  {v}: n* ({metric} <= {config.threshold:g}) {r['n_star_text']}{ratio}")
    return "\n".join(lines)


def summarize(
    task: str, n_train: int, n_test: int, seed: int, show: int, n_val: int | None = None
) -> None:
    """Print a rendered task's templates, a few samples per split (``n_val`` defaults to
    ``n_test``; 0: none) and the disjointness check."""
    import numpy as np

    from probe.data.render import dataset_tokenizer, render, task_info

    dsd = render(task, n_train, n_test if n_val is None else n_val, n_test, seed=seed)
    info = task_info(dsd)
    tok = dataset_tokenizer(dsd)
    task = info["task"]
    print(f"task {task['name']} ({info['label_kind']} labels), seed {info['seed']}")
    for i, (t, y) in enumerate(zip(task["templates"], task["labels"], strict=True)):
        print(f"  template {i}: {t:<28} -> {y}")
    print(f"tokenizer {info['tokenizer']}: {len(tok)} ids, readout token {info['readout_token']}")

    # symbols are the real tokens that are neither regular tokens nor the readout
    not_symbols = [
        info["readout_token_id"],
        *(i for r in info["regular_token_ids"].values() for i in r),
    ]
    symbol_sets = {}
    for split, ds in dsd.items():
        if ds.num_rows == 0:
            print(f"\n{split}: no samples (the runs use no {split} split)")
            symbol_sets[split] = set()
            continue
        alphabet = info["alphabets"][split]
        ids = np.asarray(ds["input_ids"])
        real = np.asarray(ds["attention_mask"]).astype(bool)
        used = np.unique(ids[real & ~np.isin(ids, not_symbols)])
        symbol_sets[split] = set(used.tolist())
        print(
            f"\n{split}: {ds.num_rows} samples over an alphabet of {alphabet['size']} symbols "
            f"({len(used)} used)"
        )
        for row in ds.select(range(min(show, ds.num_rows))):
            label = row["labels"]
            if info["label_kind"] == "symbolic":
                label = tok.convert_ids_to_tokens(label)
            print(f"  {row['text']:<36} -> {label}   ids {row['input_ids']}")

    pairs = [("train", "validation"), ("train", "test"), ("validation", "test")]
    pairs = [(a, b) for a, b in pairs if dsd[a].num_rows and dsd[b].num_rows]
    shared = {f"{a}/{b}": len(symbol_sets[a] & symbol_sets[b]) for a, b in pairs}
    ok = not any(shared.values())
    print(
        "\ndisjoint alphabets: "
        + ", ".join(f"{k} share {v}" for k, v in shared.items())
        + (" -> OK: the test uses only unseen symbols" if ok else " -> FAILED")
    )
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
