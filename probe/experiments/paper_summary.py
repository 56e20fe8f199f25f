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

``--table results/paper`` writes the table of every protocol (REPORT section 9) to
``results/paper/table.md``, and its picture (:func:`plot_table`) to ``table.png``; ``--into results/REPORT.md`` also puts it into that file,
in place of whatever stands between the lines ``<!-- paper-table -->`` and
``<!-- /paper-table -->`` (:func:`put_between`).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, replace
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


def mismatch(
    task: str, row: str, ours: int, reached: bool, smallest: int | None = None
) -> tuple[float, str]:
    """How far our n* is from the paper's, either way (``max(ours / paper, paper /
    ours)``), and its text: ``">4"`` where ours was not reached up to the largest n
    run, ``">=2"`` where ours is the ``smallest`` n run and below the paper's (it may
    lie lower still); both are bounds. A paper n* given as a bound (``PAPER_AT_MOST``:
    "<= 16") is met by any n* at or below it, and an n* above it is at least that far
    off (``">=4"`` for 64 against "<= 16"). A paper n* beyond its largest n (None,
    "> 8192") and an n* not reached are consistent but not comparable: NaN, ``"?"``."""
    paper = PAPER_N_STAR[(task, row)]
    if paper is None:
        if reached:
            return PAPER_MAX_N / ours, f">={_fmt(PAPER_MAX_N / ours)}"
        return float("nan"), "?"
    at_most = (task, row) in PAPER_AT_MOST
    if at_most and ours <= paper:
        return 1.0, "1"
    factor = max(ours / paper, paper / ours)
    if at_most and reached:  # the paper's n* may lie below its bound: ours is further off
        return factor, f">={_fmt(factor)}"
    if not reached:  # our n* lies beyond the largest n run
        factor = max(ours / paper, 1.0)
        return factor, f">{_fmt(factor)}"
    if ours == smallest and ours < paper:
        return factor, f">={_fmt(factor)}"
    return factor, _fmt(factor)


def within_2x(factor: float, factor_text: str) -> str:
    """Whether a row is within 2x of the paper, given :func:`mismatch`: ``"yes"``,
    ``"no"``, or ``"not yet (bound)"`` where the bound still allows 2x (``">1"``, or
    ``">=2"``: exactly 2 would do); ``">2"`` (our n* beyond twice the paper's) is a no."""
    if math.isnan(factor):
        return "? (both beyond the n run)"
    if not factor_text.startswith(">"):
        return "yes" if factor <= 2 else "no"
    at_least = factor_text.startswith(">=")
    if factor > 2 or (factor == 2 and not at_least):
        return "no"
    return "not yet (bound)"


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


@dataclass(frozen=True)
class TableRow:
    """A row of the paper's table (REPORT section 9): the paper's (task, variant) in
    ``PAPER_N_STAR`` and where each protocol ran it, as (folder under the paper's
    results folder, variant); None where a protocol has no run of it. ``selected`` is
    the matched protocol with model selection on the validation split
    (``recipes/paper/selected``); ``heads16`` is the selected protocol with 16 heads of
    width 8 instead of 2 of width 64 (width 128), where the cause studies
    ``recipes/paper/selected/*heads*.yaml`` ran it under their own variant names."""

    label: str
    task: str
    key: str
    literal: tuple[str, str] | None
    matched: tuple[str, str] | None
    selected: tuple[str, str] | None = None
    heads16: tuple[str, str] | None = None


# the protocols of the table, in its column order, with their column names; all but the
# literal one get a ratio to the paper
PROTOCOLS = ("literal", "matched", "selected", "heads16")
_COLUMN = {
    "literal": "literal",
    "matched": "matched",
    "selected": "selected",
    "heads16": "16 heads",
}

# where the 16-head cause studies ran each row: (folder under results/paper, variant)
_HEADS16 = {
    "same_different, plain": ("selected/same_different_heads", "none_h16"),
    "same_different, + KQ": ("selected/heads16_kq", "kq_h16"),
    "aba_vs_abb, plain": ("selected/plain_heads", "none_h16"),
    "aba_vs_abb, + KQ": ("selected/heads16", "kq_h16"),
    "aba_vs_abb, + VO": ("selected/heads16", "vo_h16"),
    "aba_vs_abb, + KQ,VO": ("selected/heads16", "kqvo_h16"),
    "majority, length 2, + KQ,VO": ("selected/majority_heads16", "len2_kq,vo_h16"),
    "majority, length 4, + KQ,VO": ("selected/majority_heads16", "len4_kq,vo_h16"),
}


def _protocols(folder: str, variant: str) -> dict:
    return {
        "literal": (folder, variant),
        "matched": (f"matched/{folder}", variant),
        "selected": (f"selected/{folder}", variant),
    }


def _with_heads16(row: TableRow) -> TableRow:
    return replace(row, heads16=_HEADS16.get(row.label))


# The MLPs have no scalings and no attention to initialize: both protocols are the
# literal one's runs. Majority length 4 plain and lengths 6-8 (n* 8192 or beyond) are
# listed with what the literal protocol measured (results/paper/NOTES.md: their cost).
TABLE_ROWS: tuple[TableRow, ...] = tuple(
    map(
        _with_heads16,
        (
            TableRow(
                "same_different, plain",
                "same_different",
                "none",
                **_protocols("same_different", "none"),
            ),
            TableRow(
                "same_different, + KQ", "same_different", "kq", **_protocols("same_different", "kq")
            ),
            TableRow("aba_vs_abb, plain", "aba_vs_abb", "none", **_protocols("aba_vs_abb", "none")),
            TableRow("aba_vs_abb, + KQ", "aba_vs_abb", "kq", **_protocols("aba_vs_abb", "kq")),
            TableRow("aba_vs_abb, + VO", "aba_vs_abb", "vo", **_protocols("aba_vs_abb", "vo")),
            TableRow(
                "aba_vs_abb, + KQ,VO", "aba_vs_abb", "kq,vo", **_protocols("aba_vs_abb", "kq,vo")
            ),
            TableRow(
                "aba_vs_abb, MLP (one-hot)",
                "aba_vs_abb",
                "mlp_onehot",
                ("aba_vs_abb_mlp", "mlp_onehot"),
                ("aba_vs_abb_mlp", "mlp_onehot"),
            ),
            TableRow(
                "aba_vs_abb, MLP + exact XXᵀ",
                "aba_vs_abb",
                "mlp_onehot_xxt",
                ("aba_vs_abb_mlp", "mlp_onehot_xxt"),
                ("aba_vs_abb_mlp", "mlp_onehot_xxt"),
            ),
            TableRow(
                "majority, length 2, plain", "majority_k", "len2", **_protocols("majority", "len2")
            ),
            TableRow(
                "majority, length 2, + KQ,VO",
                "majority_k",
                "len2_kq,vo",
                **_protocols("majority", "len2_kq,vo"),
            ),
            TableRow(
                "majority, length 4, + KQ,VO",
                "majority_k",
                "len4_kq,vo",
                **_protocols("majority", "len4_kq,vo"),
            ),
            TableRow("majority, length 4, plain", "majority_k", "len4", ("majority", "len4"), None),
            TableRow("majority, length 6, plain", "majority_k", "len6", ("majority", "len6"), None),
            TableRow(
                "majority, length 6, + KQ,VO",
                "majority_k",
                "len6_kq,vo",
                ("majority", "len6_kq,vo"),
                None,
            ),
            TableRow("majority, length 8, plain", "majority_k", "len8", ("majority", "len8"), None),
            TableRow(
                "majority, length 8, + KQ,VO",
                "majority_k",
                "len8_kq,vo",
                ("majority", "len8_kq,vo"),
                None,
            ),
            *(
                TableRow(
                    f"copy, plain, width {w}",
                    "copy",
                    f"cls_w{w}",
                    **_protocols("copy", f"cls_w{w}"),
                )
                for w in (64, 128, 256)
            ),
            *(
                TableRow(
                    f"copy, + VO, width {w}",
                    "copy",
                    f"cls_vo_w{w}",
                    **_protocols("copy", f"cls_vo_w{w}"),
                )
                for w in (64, 128, 256)
            ),
        ),
    )
)


def _n_star_text(folder: Path, variant: str, threshold: float) -> tuple[str, int, bool, int, str]:
    """``"128 (3/3)"`` / ``">512"`` for one variant of one results folder, with n*,
    whether it was reached, the smallest n run and, where n* (or, not reached, the
    largest n) rests on fewer seeds than the variant has elsewhere (its cells there
    still running), ``"1 of 3 seeds at n 1024"``;
    ``("not run", ...)`` without rows."""
    if not any(folder.glob("results*.jsonl")):
        return "not run", 0, False, 0, ""
    df = load_results([folder])
    df = df[df["status"] == "ok"] if "status" in df.columns else df
    df = df[df["variant"] == variant]
    if df.empty:
        return "not run", 0, False, 0, ""
    metric = metric_of(df)
    curve = curves(df, metric)
    (star,) = n_star(curve, threshold, baseline=None, rows=df, metric=metric).itertuples()
    n, reached = int(star.n_star), bool(star.reached)
    text = f"{star.n_star_text} ({star.seeds_ok})" if reached else star.n_star_text
    # n* reached, or the bound's largest n, on fewer seeds than the variant has elsewhere
    at = n if reached else int(df["n"].max())
    seeds, at_n = df["seed"].nunique(), df.loc[df["n"] == at, "seed"].nunique()
    partial = f"{at_n} of {seeds} seeds at n {at}" if at_n < seeds else ""
    return text, n, reached, int(curve["n"].min()), partial


def paper_table(
    root: str | Path, causes: dict[str, str] | None = None, threshold: float = THRESHOLD
) -> pd.DataFrame:
    """REPORT section 9's table from the results under ``root`` (``results/paper``):
    per ``TABLE_ROWS`` row, the paper's n*, each protocol's n* (``PROTOCOLS``) with
    its seeds, every protocol but the literal one's mismatch factor against the paper
    (:func:`mismatch`) and whether it is within 2x, and ``causes[label]`` for a row
    that the matched or the selected protocol does not put within 2x (where one does
    and the other does not, the cause says what makes the difference; the 16-head
    cause studies' column does not decide it)."""
    root = Path(root)
    causes = causes or {}
    out = []
    for row in TABLE_ROWS:
        paper = PAPER_N_STAR[(row.task, row.key)]
        at_most = (row.task, row.key) in PAPER_AT_MOST
        paper_text = f">{PAPER_MAX_N}" if paper is None else f"<={paper}" if at_most else str(paper)
        texts, ratios = {}, {}
        for name in PROTOCOLS:
            where = getattr(row, name)
            texts[name] = (
                _n_star_text(root / where[0], where[1], threshold)
                if where is not None
                else ("not run", 0, False, 0, "")
            )
            text, n, reached, smallest, partial = texts[name]
            if text == "not run":
                ratios[name] = ("", "not run")
                continue
            factor, factor_text = mismatch(row.task, row.key, n, reached, smallest)
            within = within_2x(factor, factor_text)
            if partial:  # the seeds still running there may move it
                within = f"not yet ({partial})"
            ratios[name] = (factor_text, within)
        within = ratios["matched"][1]
        both = within == ratios["selected"][1] == "yes"
        line = {"row": row.label, "paper n*": paper_text, "literal n* (seeds)": texts["literal"][0]}
        for name in PROTOCOLS[1:]:
            line[f"{_COLUMN[name]} n* (seeds)"] = texts[name][0]
            line[f"{_COLUMN[name]} / paper"] = ratios[name][0]
            line["within 2x" if name == "matched" else f"{_COLUMN[name]} within 2x"] = ratios[name][
                1
            ]
        line["cause"] = "" if both else causes.get(row.label, "")
        out.append(line)
    return pd.DataFrame(out)


TABLE_START, TABLE_END = "<!-- paper-table -->", "<!-- /paper-table -->"

# how each n* column of the table is drawn by plot_table: marker and colour
_MARKS = {
    "paper n*": ("*", "black"),
    "literal n* (seeds)": ("o", "tab:gray"),
    "matched n* (seeds)": ("s", "tab:blue"),
    "selected n* (seeds)": ("^", "tab:orange"),
    "16 heads n* (seeds)": ("D", "tab:green"),
}


def parse_n_star(text: str) -> tuple[float, str] | None:
    """An n* cell of the table as (n, kind): ``"128 (2/3)"`` -> (128, "="), ``">4096"``
    -> (4096, ">"), ``"<=16"`` -> (16, "<="); None for "not run" and the like."""
    text = str(text).strip()
    for kind in ("<=", ">"):
        if text.startswith(kind):
            rest = text[len(kind) :].split()[0]
            return (float(rest), kind) if rest.isdigit() else None
    first = text.split()[0] if text else ""
    return (float(first), "=") if first.isdigit() else None


def plot_table(table: pd.DataFrame):
    """The table as a picture: per row, the paper's n* and each protocol's on a log2
    axis, a bound (``>N``) drawn at N with an arrow to the right, the band within 2x of
    the paper shaded. Returns a matplotlib ``Figure`` (object API, no pyplot state)."""
    from matplotlib.figure import Figure

    rows = list(table["row"])
    fig = Figure(figsize=(9, 0.36 * len(rows) + 1.6))
    ax = fig.add_subplot()
    offsets = dict(zip(_MARKS, (0.0, -0.32, -0.16, 0.16, 0.32), strict=True))
    for i, (_, r) in enumerate(table.iterrows()):
        y = len(rows) - 1 - i
        paper = parse_n_star(r["paper n*"])
        if paper is not None and paper[1] != ">":
            ax.fill_betweenx([y - 0.4, y + 0.4], paper[0] / 2, paper[0] * 2, color="0.92", lw=0)
        for column, (marker, colour) in _MARKS.items():
            got = parse_n_star(r[column])
            if got is None:
                continue
            n, kind = got
            yy = y + offsets[column]
            hollow = kind != "="
            ax.scatter(
                [n],
                [yy],
                marker=marker,
                s=60 if marker != "*" else 110,
                facecolors="none" if hollow else colour,
                edgecolors=colour,
                zorder=3,
            )
            if kind in (">", "<="):
                ax.annotate(
                    "",
                    xy=(n * (1.6 if kind == ">" else 1 / 1.6), yy),
                    xytext=(n, yy),
                    arrowprops={"arrowstyle": "->", "color": colour, "lw": 1.2},
                )
    ax.set_xscale("log", base=2)
    ax.set_yticks(range(len(rows)), list(reversed(rows)), fontsize=8)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("n* (training samples = training alphabet size); hollow with an arrow: a bound")
    for column, (marker, colour) in _MARKS.items():
        ax.scatter([], [], marker=marker, color=colour, label=column.split(" (")[0])
    ax.fill_between([], [], color="0.92", label="within 2x of the paper")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title("The paper's n* and each protocol's (results/paper/table.md)", fontsize=10)
    fig.tight_layout()
    return fig


def put_between(path: Path, text: str, start: str = TABLE_START, end: str = TABLE_END) -> None:
    """``path`` with what stands between its lines ``start`` and ``end`` replaced by
    ``text``; ``ValueError`` naming the file and the missing or repeated marker, with
    nothing written, when the two do not appear once each and in that order."""
    lines = path.read_text().splitlines(keepends=True)
    at = {m: [i for i, line in enumerate(lines) if line.strip() == m] for m in (start, end)}
    bad = [m for m, found in at.items() if len(found) != 1]
    if bad or at[start][0] > at[end][0]:
        found = f"found {len(at[start])} and {len(at[end])}" if bad else "found them reversed"
        raise ValueError(
            f"{path}: expected one line {start!r} and, after it, one line {end!r} around "
            f"the table ({found}); add them where the table goes"
        )
    i, j = at[start][0], at[end][0]
    body = text if text.endswith("\n") else text + "\n"
    path.write_text("".join(lines[: i + 1]) + body + "".join(lines[j:]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m probe.experiments.paper_summary", description=__doc__
    )
    parser.add_argument("folders", nargs="+", help="results folders of recipes/paper sweeps")
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    parser.add_argument(
        "--table",
        action="store_true",
        help="FOLDERS is the paper's results root (results/paper): write its table.md, "
        "REPORT section 9's table of both protocols (causes read from causes.yaml there)",
    )
    parser.add_argument(
        "--into",
        type=Path,
        help=f"with --table: also put the table into this file (results/REPORT.md) between "
        f"its lines {TABLE_START} and {TABLE_END}",
    )
    args = parser.parse_args(argv)
    if args.into is not None and not args.table:
        parser.error("--into puts the table of --table into a file: pass --table too")
    if args.into is not None and not args.into.is_file():
        parser.error(
            f"--into {str(args.into)!r} is not a file; pass the report, e.g. results/REPORT.md"
        )
    if args.table:
        import yaml

        (root,) = args.folders
        root = Path(root)
        causes_file = root / "causes.yaml"
        causes = yaml.safe_load(causes_file.read_text()) if causes_file.is_file() else {}
        table = paper_table(root, causes, args.threshold)
        text = markdown_table(table) + "\n"
        if args.into is not None:  # checked before table.md is written
            try:
                put_between(args.into, text)
            except ValueError as err:
                parser.error(str(err))
        (root / "table.md").write_text(text)
        plot_table(table).savefig(root / "table.png", dpi=110)
        print(text)
        return
    for folder in args.folders:
        path = Path(folder)
        if not path.is_dir():
            parser.error(f"{folder!r} is not a folder; pass a sweep's results folder")
        text = f"# {path.name}\n\n" + markdown_table(summary(path, args.threshold)) + "\n"
        (path / "paper_summary.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
