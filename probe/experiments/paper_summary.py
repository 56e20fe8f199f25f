"""n* against the paper, with its seeds: ``python -m probe.experiments.paper_summary results/paper/X ...``.

For each results folder of a ``recipes/paper/`` sweep, per variant: n* (the
smallest n whose mean test metric over seeds is at most the threshold, as
``probe report``), how many seeds are at most the threshold there
("64 (3/3 seeds <= 0.05)"), the spread (min-max over seeds) at n*, the
paper's n* (its official figure data) and the ratio ours / paper's. An n* not
reached is written ``>N`` (N the largest n run) and gets a lower bound for a
ratio, never a number; so does a paper n* that its figure gives only as a bound
(``<=16``, ``PAPER_AT_MOST``). ``NO_RATIO`` names the rows with no ratio, and why.
Writes ``paper_summary.md`` into each folder and prints it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from probe.experiments.recipe import THRESHOLD
from probe.experiments.report import (
    cell_seconds,
    curves,
    load_results,
    markdown_table,
    metric_of,
    n_star,
)

# (task, variant) -> the paper's n* (official figure data; None: not reached up to 8192)
PAPER_N_STAR: dict[tuple[str, str], int | None] = {
    ("same_different", "none"): 2048,
    ("same_different", "kq"): 64,
    ("same_different", "paper"): 64,
    ("aba_vs_abb", "none"): 2048,
    ("aba_vs_abb", "kq"): 32,
    ("aba_vs_abb", "vo"): 1024,
    ("aba_vs_abb", "kq,vo"): 64,
    ("aba_vs_abb", "mlp_onehot"): None,
    ("aba_vs_abb", "mlp_onehot_xxt"): 2048,
    # GPT-2's init with the scalings at lr 0.01: the same figures' n*
    ("aba_vs_abb", "none_gpt2init"): 2048,
    ("aba_vs_abb", "kq_gpt2init_a_lr0.01"): 32,
    ("aba_vs_abb", "kq,vo_gpt2init_ab_lr0.01"): 64,
    # majority over lengths 2 / 4 / 6 / 8 (recipes/paper/majority.yaml)
    ("majority_k", "len2"): 2048,
    ("majority_k", "len4"): 8192,
    ("majority_k", "len6"): None,
    ("majority_k", "len8"): None,
    ("majority_k", "len2_kq,vo"): 128,
    ("majority_k", "len4_kq,vo"): 2048,
    ("majority_k", "len6_kq,vo"): 8192,
    ("majority_k", "len8_kq,vo"): 8192,
    # copy at widths 64 ... 512 (recipes/paper/copy.yaml): the figure's plain n* per width,
    # whichever readout (none_: pool "final", cls_: pool "cls"); + VO: "<= 16" at every
    # width, written 16
    **{
        ("copy", f"{p}_w{w}"): n
        for w, n in ((64, 128), (128, 128), (256, 128), (512, 256))
        for p in ("none", "cls")
    },
    **{
        ("copy", f"{p}_w{w}"): 16
        for w in (64, 128, 256, 512)
        for p in ("vo", "cls_vo", "cls_vo_b_lr0.03")
    },
}
PAPER_MAX_N = 8192
# The paper's n* that its figures give only as an upper bound ("<= 16": + VO on copy
# is at the threshold from the smallest n plotted), so a ratio against it is a lower bound.
PAPER_AT_MOST: frozenset[tuple[str, str]] = frozenset(
    ("copy", f"{p}_w{w}") for w in (64, 128, 256, 512) for p in ("vo", "cls_vo", "cls_vo_b_lr0.03")
)
# Variants with no ratio to the paper, and why.
NO_RATIO: dict[tuple[str, str], str] = {
    ("copy", f"{p}_w{w}"): "- (pool final: the one-token task is degenerate, copied at init)"
    for w in (64, 128, 256, 512)
    for p in ("none", "vo")
}


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def summary(folder: str | Path, threshold: float = THRESHOLD) -> pd.DataFrame:
    """One row per variant of the sweep in ``folder`` (see the module docstring); n*
    and its seeds come from ``probe.experiments.report.n_star``."""
    df = load_results([folder])
    metric = metric_of(df)
    curve = curves(df, metric)
    stars = n_star(curve, threshold, baseline=None, rows=df, metric=metric)
    # the catalogue name: a parameterized task's rows say e.g. "majority_k-k2"
    task = str(df["task"].iloc[0]).split("-")[0] if "task" in df.columns else ""
    out = []
    for star in stars.itertuples(index=False):
        g = curve[curve["variant"] == star.variant].sort_values("n")
        n, reached = int(star.n_star), bool(star.reached)
        cell = df[(df["variant"] == star.variant) & (df["n"] == n)][metric]
        ours = f"{n} ({star.seeds_ok} seeds <= {threshold:g})" if reached else f">{n}"
        paper = PAPER_N_STAR.get((task, star.variant), "n/a")
        if paper == "n/a":
            paper_text, ratio = "n/a", ""
        elif paper is None:
            paper_text = f">{PAPER_MAX_N}"
            ratio = f"<{_fmt(n / PAPER_MAX_N)}" if reached else "?"
        else:
            at_most = (task, star.variant) in PAPER_AT_MOST
            paper_text = f"<={paper}" if at_most else str(paper)
            if not reached:
                ratio = f">{_fmt(n / paper)}"
            else:
                ratio = (">=" if at_most else "") + _fmt(n / paper)
        ratio = NO_RATIO.get((task, star.variant), ratio)
        per_n = "; ".join(
            f"{int(r['n'])}: {_fmt(r['mean'])} [{_fmt(r['min'])}-{_fmt(r['max'])}]"
            for _, r in g.iterrows()
        )
        largest = df[(df["variant"] == star.variant) & (df["n"] == g["n"].max())]
        out.append(
            {
                "variant": star.variant,
                "n*": ours,
                "spread at n*": f"{_fmt(cell.min())}-{_fmt(cell.max())}",
                "paper n*": paper_text,
                "ours / paper": ratio,
                f"mean {metric} [min-max] per n": per_n,
                "cells": f"{int(g['count'].sum())}",
                "wall s/cell at largest n": _fmt(cell_seconds(largest).mean()),
            }
        )
    return pd.DataFrame(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m probe.experiments.paper_summary", description=__doc__
    )
    parser.add_argument("folders", nargs="+", help="results folders of recipes/paper sweeps")
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    args = parser.parse_args(argv)
    for folder in args.folders:
        path = Path(folder)
        if not path.is_dir():
            parser.error(f"{folder!r} is not a folder; pass a sweep's results folder")
        text = f"# {path.name}\n\n" + markdown_table(summary(path, args.threshold)) + "\n"
        (path / "paper_summary.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
