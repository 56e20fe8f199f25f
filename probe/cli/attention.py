"""``probe attention``: run a model on rendered samples and write what its heads attend to."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.analysis.attention import SCORES


def load_run(folder: Path):
    """A run folder's saved model (``--save-model``) and the run's own data, rendered again
    from its ``run_config.json`` (same task, sizes, tokenizer and seed: the same rows)."""
    from probe.models.identity import load_injected
    from probe.train.config import FinetuneConfig
    from probe.train.run_dir import RunDir
    from probe.train.setup import run_dataset

    run = RunDir(folder)
    if not run.model_dir.is_dir():
        raise FileNotFoundError(
            f"--model {str(folder)!r} is a run folder without a saved model; rerun it with "
            "--save-model, or pass the checkpoint folder"
        )
    config = FinetuneConfig.from_dict({**run.saved_config(), "resume": False})
    return load_injected(run.model_dir), run_dataset(config)


def main(argv: list[str] | None = None) -> None:
    from probe.analysis.plots import plot_attention, save_figure

    parser = argparse.ArgumentParser(
        prog="probe attention",
        description="Attention on data: per-head equality and readout scores on rendered samples.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model",
        required=True,
        help="a finetune run folder saved with --save-model (its own data is rendered again), "
        "or a checkpoint folder (then pass --dataset)",
    )
    parser.add_argument("--dataset", default=None, help="a rendered dataset folder (Hub layout)")
    parser.add_argument("--config", default=None, help="config name inside --dataset")
    parser.add_argument("--split", default="test", help="split to run on (test: unseen symbols)")
    parser.add_argument("--max-samples", type=int, default=512, help="rows of the split used")
    parser.add_argument("--out", required=True, help="folder for attention.csv and the PNGs")
    args = parser.parse_args(argv)

    from probe.analysis.attention import attention_scores
    from probe.data.hub import load_dataset
    from probe.models.identity import load_injected
    from probe.train.run_dir import CONFIG_FILE

    folder = Path(args.model).expanduser()
    if (folder / CONFIG_FILE).is_file():
        model, dsd = load_run(folder)
        if args.dataset is not None:
            dsd = load_dataset(args.dataset, args.config)
    else:
        if args.dataset is None:
            parser.error(f"--model {args.model!r} is no run folder: pass --dataset (and --config)")
        model, dsd = load_injected(args.model), load_dataset(args.dataset, args.config)
    df = attention_scores(model, dsd, split=args.split, max_samples=args.max_samples)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "attention.csv", index=False)
    written = [out / "attention.csv"]
    for score in SCORES:
        written.append(save_figure(plot_attention(df, score), out / f"heatmap_{score}.png"))
    top = df.loc[df["equality_score"].abs().idxmax()]
    layer, head = int(top["layer"]), int(top["head"])
    written.append(
        save_figure(plot_attention(df, layer=layer, head=head), out / f"maps_L{layer}_h{head}.png")
    )
    print(df.round(4).to_string(index=False))
    print("wrote " + ", ".join(str(p) for p in written))
