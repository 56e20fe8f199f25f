"""``probe attention``: run a model on rendered samples and write what its heads attend to."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.cli import entry_points


def load_run_model(folder: str | Path):
    """The saved model (``--save-model``) of the run in ``folder`` (or its ``model/``)."""
    from probe.models.identity import load_injected
    from probe.train.run_dir import RunDir

    run = RunDir.find(folder)
    if not run.model_dir.is_dir():
        raise FileNotFoundError(
            f"--model {str(folder)!r}: the run {str(run.path)!r} has no saved model (model/); "
            "rerun it with --save-model (its checkpoints hold training state, not a model)"
        )
    return load_injected(run.model_dir)


NAME = "attention"
HELP = "what every head attends to on rendered samples"
DESCRIPTION = "Attention on data: per-head equality and readout scores on rendered samples."
FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a finetune run folder saved with --save-model, or the model/ in it (the run's "
        "own data is rendered again: the same rows), or any saved model folder (then pass "
        "--dataset)",
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="a rendered dataset folder (Hub layout) whose token ids fit the model; for a "
        "run's own rows pass the run folder as --model, or `probe data render --from-run RUN`",
    )
    p.add_argument("--config", default=None, help="config name inside --dataset")
    p.add_argument("--split", default="test", help="split to run on (test: unseen symbols)")
    p.add_argument("--max-samples", type=int, default=512, help="rows of the split used")
    p.add_argument("--out", required=True, help="folder for attention.csv and the PNGs")


build_parser, add_parser, main = entry_points(__name__)


def run(args: argparse.Namespace) -> None:
    parser = getattr(args, "parser", None) or build_parser()

    from probe.analysis.attention import SCORES, attention_scores
    from probe.analysis.plots import plot_attention, save_figure
    from probe.data.hub import load_dataset
    from probe.models.identity import load_injected
    from probe.train.run_dir import RunDir
    from probe.train.setup import run_folder_dataset

    run = RunDir.find(args.model)
    if run is not None:  # a run folder, or the model/ in it: by default its own rows
        model = load_run_model(args.model)
        if args.dataset is None:
            dsd = run_folder_dataset(run.path)
        else:
            dsd = load_dataset(args.dataset, args.config)
    else:
        if args.dataset is None:
            parser.error(
                f"--model {args.model!r} is no run folder: pass a finetune --output-dir saved "
                "with --save-model (its own data is used), or --dataset (and --config)"
            )
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
