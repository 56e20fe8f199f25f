"""``probe diagonal``: load a checkpoint (or its architecture with fresh weights), write
``attn_diagonal``'s table, a layer × head heatmap and the top heads' matrices."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from probe.analysis import EFFECTIVE_SCORES, SCORES
from probe.cli import entry_points
from probe.errors import CannotLoad

if TYPE_CHECKING:  # torch waits for a model: `probe diagonal --help` answers at once
    from torch import nn


def load_model(
    name_or_path: str, gguf: str | None = None, from_scratch: bool = False, seed: int = 0
) -> nn.Module:
    """A model for ``attn_diagonal``: any name ``probe.models.resolve.resolve_model`` takes
    (a Hub id, a local folder, a GGUF file, ``offline:smollm2``, an architecture name),
    loaded with the architecture's ``analysis_class`` (its usual head).

    ``from_scratch`` builds the same architecture from its config with fresh weights drawn
    under ``torch.manual_seed(seed)`` (the global RNG state is restored afterwards). The
    architecture is checked against ``probe.models.architectures`` before any weights are read.
    """
    import torch
    import transformers

    from probe.models.architectures import arch_spec
    from probe.models.resolve import resolve_model

    ref = resolve_model(name_or_path, gguf, pretrained=not from_scratch)
    if ref.kind == "mlp":
        raise ValueError(f"--model {name_or_path!r} is an MLP baseline: it has no attention heads")
    try:
        config = ref.load_config()
    except OSError as err:
        raise CannotLoad(
            f"could not load a config for {str(name_or_path)!r}"
            + (f" (gguf_file={gguf!r})" if gguf else "")
            + f": {err}\nOffline, pass a local folder, or a .gguf file with --gguf."
        ) from err
    for key, value in ref.overrides.items():  # a preset's shape (small-gpt2)
        setattr(config, key, value)
    auto = getattr(transformers, arch_spec(config).analysis_class)
    kwargs = {"gguf_file": ref.gguf_file} if ref.gguf_file else {}
    name_or_path = ref.source
    if from_scratch:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = auto.from_config(config)
    elif getattr(config, "probe_ab", None):
        # saved after inject_ab: from_pretrained alone would drop the identity scalings
        from probe.models.identity import load_injected

        model = load_injected(name_or_path, **kwargs)
    else:
        try:
            model = auto.from_pretrained(name_or_path, **kwargs)
        except OSError as err:  # e.g. a folder with a config and no weights
            raise CannotLoad(f"could not load the weights of {str(name_or_path)!r}: {err}") from err
    return model.eval()


NAME = "diagonal"
HELP = "identity structure of every attention head of a checkpoint"
DESCRIPTION = "Identity structure (W_Q W_Kᵀ, W_V W_O ≈ a·I) of every attention head."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hub id, local folder or .gguf file")
    p.add_argument("--gguf", default=None, help="GGUF file name inside the --model folder")
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="score the same architecture with fresh random weights (seeded by --seed)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of --from-scratch weights (default: %(default)s)"
    )
    p.add_argument("--out", required=True, help="output folder for the CSV and PNGs")
    p.add_argument(
        "--score",
        default="cos_identity",
        choices=SCORES + tuple(f"eff_{s}" for s in EFFECTIVE_SCORES),
        help="score shown in the heatmap and used to pick the top heads "
        "(eff_*: with the identity scalings of an injected checkpoint; default: %(default)s)",
    )
    p.add_argument(
        "--fold-layernorm", action="store_true", help="fold the input norms' gains into W_Q/K/V"
    )
    p.add_argument(
        "--top",
        type=int,
        default=4,
        help="plot the matrices of the top N heads (default: %(default)s)",
    )
    p.add_argument(
        "--block",
        type=int,
        default=64,
        help="top-left block size of head plots (default: %(default)s)",
    )


build_parser, add_parser, main = entry_points(__name__)


def run(args: argparse.Namespace) -> None:
    """``probe diagonal``: write the per-head table and its pictures for one checkpoint."""
    parser = getattr(args, "parser", None) or build_parser()
    if args.top < 0:
        parser.error(f"--top {args.top}: pass 0 or more heads to plot")
    if args.block < 1:
        parser.error(f"--block {args.block}: pass a block size of at least 1")

    from probe.analysis.diagonal import attn_diagonal, top_heads
    from probe.analysis.plots import plot_diagonal, plot_head, save_figure

    # not found / offline / unsupported: ProbeError or ValueError, one line (probe.errors)
    model = load_model(args.model, args.gguf, args.from_scratch, args.seed)
    df = attn_diagonal(model, fold_layernorm=args.fold_layernorm)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "diagonal.csv", index=False)
    written = [out / "diagonal.csv", out / f"heatmap_{args.score}.png"]
    save_figure(plot_diagonal(df, score=args.score), written[-1])
    top = top_heads(df, args.score, args.top)
    for row in top.itertuples():
        kind = "" if row.kind == "self" else f"{row.kind}_"
        path = out / f"head_{kind}L{row.layer}_h{row.head}_{row.matrix}.png"
        fig = plot_head(
            model,
            row.layer,
            row.head,
            row.matrix,
            kind=row.kind,
            block=args.block,
            fold_layernorm=args.fold_layernorm,
        )
        save_figure(fig, path)
        written.append(path)
    cols = ["kind", "layer", "head", "matrix", "a_star", "cos_identity", "copying_score"]
    if len(top):
        print(top[cols].to_string(index=False))
    print("wrote " + ", ".join(str(p) for p in written))


if __name__ == "__main__":  # `python -m probe.cli.diagonal`: as `probe diagonal`
    from probe.cli import run_command

    run_command(NAME)
