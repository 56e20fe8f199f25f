"""``probe linear-probe``: per-layer linear probes of a model's hidden states on unseen
symbols, with a random-weight twin and control labels (``probe.linear_probe``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from probe.analysis import CONTROLS, POSITIONS
from probe.cli import entry_points


def parse_layers(text: str | None) -> list[int] | None:
    """``"0,3,6"`` or ``"0-6"`` (or both, comma-separated) -> layer numbers; None: all."""
    if text is None:
        return None
    layers: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        lo, dash, hi = part.partition("-")
        try:
            layers.extend(range(int(lo), int(hi) + 1) if dash else [int(lo)])
        except ValueError:
            raise ValueError(
                f"--layers {text!r}: {part!r} is not a layer number or a range; write e.g. "
                "'0,4,8' or '0-12'"
            ) from None
    return layers


NAME = "linear-probe"
HELP = "per-layer linear probes of hidden states on unseen symbols, with controls"
DESCRIPTION = (
    "Linear probes of every layer's hidden state, trained on the train "
    "split and scored on the test split (unseen symbols), with controls."
)
FORMATTER = argparse.ArgumentDefaultsHelpFormatter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="a model name probe builds (offline:smollm2, gpt2, a checkpoint folder, paper, ...)",
    )
    p.add_argument(
        "--pretrained",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="load the checkpoint's weights (--no-pretrained: the architecture from scratch)",
    )
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--task", help="a catalogue task, rendered with the model's tokenizer")
    data.add_argument("--dataset", help="a rendered dataset folder (Hub layout)")
    p.add_argument("--config", default=None, help="config name inside --dataset")
    p.add_argument("--n-train", type=int, default=256, help="training rows rendered (--task)")
    p.add_argument("--n-test", type=int, default=256, help="test rows rendered (--task)")
    p.add_argument(
        "--probe-n-train",
        type=int,
        default=None,
        help="the probe's training rows (the first ones of train; default: all)",
    )
    p.add_argument("--layers", default=None, help="e.g. '0,6,12' or '0-12' (default: all)")
    p.add_argument("--position", choices=POSITIONS, default="readout")
    p.add_argument(
        "--control",
        nargs="*",
        choices=CONTROLS,
        default=list(CONTROLS),
        help="controls to run (none: pass --control with no value)",
    )
    p.add_argument("--seed", type=int, default=0, help="rendering, random twin, shuffles")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", required=True, help="folder for linear_probe.csv/.md/.png")


build_parser, add_parser, main = entry_points(__name__)


def _tokenizer(model: str, pretrained: bool):
    """The model's own tokenizer (pretrained), else None: probe's SymbolTokenizer."""
    from probe.data.tokenizer import load_tokenizer_by_name
    from probe.models.resolve import resolve_model

    ref = resolve_model(model, None, pretrained)
    if ref.kind != "checkpoint" or not ref.pretrained:
        return None
    return load_tokenizer_by_name(ref.source, gguf_file=ref.gguf_file)


def run(args: argparse.Namespace) -> None:
    from probe.analysis.linear_probe import check_controls
    from probe.checks import check_count
    from probe.experiments.report import markdown_table
    from probe.models.resolve import resolve_model

    # every input checked before any model or data work
    layers = parse_layers(args.layers)
    controls = check_controls(args.control)
    check_count(args.n_train, "--n-train", low=2)
    check_count(args.n_test, "--n-test", low=1)
    check_count(args.seed, "--seed")
    if args.probe_n_train is not None:
        check_count(args.probe_n_train, "--probe-n-train", low=2)
    resolve_model(args.model, None, args.pretrained)  # a clear error for an unknown name
    task = None
    if args.task is not None:
        from probe.tasks.catalogue import resolve_task

        task, _ = resolve_task(args.task)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; pass a folder")

    import probe
    from probe.analysis.linear_probe import linear_probe
    from probe.analysis.plots import plot_linear_probe, save_figure

    if task is not None:
        tok = _tokenizer(args.model, args.pretrained)
        dsd = probe.render(task, args.n_train, 0, args.n_test, tokenizer=tok, seed=args.seed)
    else:
        dsd = probe.load_dataset(args.dataset, args.config)
        task = probe.data.render.dataset_task(dsd)
    model = probe.build_model(
        args.model,
        task=task,
        tokenizer=probe.dataset_tokenizer(dsd),
        pretrained=args.pretrained,
        seed=args.seed,
    )
    df = linear_probe(
        model,
        dsd,
        layers=layers,
        position=args.position,
        n_train=args.probe_n_train,
        control=controls,
        seed=args.seed,
        batch_size=args.batch_size,
        progress=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "linear_probe.csv", index=False)
    (out / "linear_probe.md").write_text(markdown_table(df.round(3)) + "\n", encoding="utf-8")
    title = f"{args.model} on {task.name} ({args.position})"
    png = save_figure(plot_linear_probe(df, title=title), out / "linear_probe.png")
    print(df.round(3).to_string(index=False))
    print(f"wrote {out / 'linear_probe.csv'}, {out / 'linear_probe.md'}, {png}")
