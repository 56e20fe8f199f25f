"""The paper-protocol search (issue 20): which step of the scalings and which init of
the projections bring the cheap rows' n* closest to the paper's.

``python -m probe.experiments.protocol_search results/paper/search`` reads every
results folder under the given folder (``recipes/paper/search/*.yaml`` sweeps), whose
variants are named ``<row>_ab<S>_<init>`` (the row, e.g. ``kq,vo``; the scalings'
learning rate S; the projections' init), and writes into it:

- ``rows.csv`` / ``rows.md``: per (setting, row): n* with its seeds, the paper's n*,
  and the row's **mismatch factor**: how far n* is from the paper's, either way
  (``max(ours / paper, paper / ours)``; a paper n* given as a bound, copy + VO's
  "<= 16", counts as met at or below it; an n* not reached up to the largest n run
  is a lower bound, ``largest n / paper``, marked ``>``, and so is one reached at the
  smallest n run below the paper's, marked ``>=``);
- ``settings.csv`` / ``settings.md``: per setting, the worst factor over the rows (and
  their geometric mean), best first — the setting that minimizes the worst factor is
  the matched protocol (a bound ranks above an exact factor of its size; ties then
  broken by the geometric mean);
- ``worst_ratio.png``: the worst factor per setting, with each row's factor.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pandas as pd

from probe.experiments.paper_summary import PAPER_AT_MOST, PAPER_N_STAR, mismatch, within_2x
from probe.experiments.recipe import THRESHOLD
from probe.experiments.report import curves, load_results, markdown_table, metric_of, n_star

VARIANT = re.compile(r"^(?P<row>.+)_ab(?P<lr>[0-9.e-]+)_(?P<init>[a-z0-9]+)$")


def parse_variant(variant: str) -> tuple[str, float, str]:
    """``"kq,vo_ab0.01_gpt2"`` -> ``("kq,vo", 0.01, "gpt2")``."""
    m = VARIANT.match(variant)
    if m is None:
        raise ValueError(
            f"variant {variant!r} is not named <row>_ab<lr>_<init> (e.g. kq_ab0.01_gpt2), "
            f"as recipes/paper/search/*.yaml name theirs"
        )
    return m["row"], float(m["lr"]), m["init"]


def row_table(folder: str | Path, threshold: float = THRESHOLD) -> pd.DataFrame:
    """Per (setting, row) of every sweep under ``folder``: n*, its seeds and the
    mismatch factor against the paper's n*."""
    folders = sorted(p.parent for p in Path(folder).glob("*/results*.jsonl"))
    if not folders:
        raise FileNotFoundError(
            f"no results folders under {str(folder)!r}; run recipes/paper/search/run.sh first"
        )
    out = []
    for sub in dict.fromkeys(folders):
        df = load_results([sub])
        df = df[df["status"] == "ok"] if "status" in df.columns else df
        metric = metric_of(df)
        curve = curves(df, metric)
        stars = n_star(curve, threshold, baseline=None, rows=df, metric=metric)
        task = str(df["task"].iloc[0]).split("-")[0]
        for s in stars.itertuples(index=False):
            row, lr, init = parse_variant(s.variant)
            g = curve[curve["variant"] == s.variant]
            complete = int(g["count"].min()) == len(df["seed"].unique()) and len(g) == len(
                df["n"].unique()
            )
            factor, text = mismatch(
                task, row, int(s.n_star), bool(s.reached), smallest=int(g["n"].min())
            )
            out.append(
                {
                    "ab_lr": lr,
                    "init": init,
                    "task": task,
                    "row": row,
                    "n*": s.n_star_text,
                    "seeds ok": s.seeds_ok,
                    "paper n*": PAPER_N_STAR[(task, row)],
                    "factor": factor,
                    "factor_text": text,
                    "complete": complete,
                    "means": ", ".join(f"{m:.3g}" for m in g.sort_values("n")["mean"]),
                }
            )
    return pd.DataFrame(out)


def ours_is_bound(task: str, row: str, factor_text: str) -> bool:
    """Whether a row's mismatch (:func:`mismatch`'s text) is a bound because of our
    measurement (n* not reached, or reached at the smallest n run), not because the
    paper gives its n* only as a bound (``PAPER_AT_MOST``)."""
    if (task, row) in PAPER_AT_MOST and factor_text.startswith(">="):
        return False
    return factor_text.startswith(">")


def setting_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per setting (ab_lr, init) whose every row is complete: the worst factor over
    the rows, which row it is, and the geometric mean; best first."""
    out = []
    n_rows = rows.groupby(["task", "row"]).ngroups
    for (lr, init), g in rows.groupby(["ab_lr", "init"]):
        if len(g) < n_rows or not g["complete"].all():
            continue  # a setting still running: not ranked
        # A bound of ours (">4": not reached; ">=2": reached at the smallest n run) may
        # hide a larger factor, so it ranks above an exact factor of the same size. A
        # bound the paper gives (">=4" against "<= 16") is the same for every setting:
        # it ranks as its factor.
        bound = pd.Series(
            {
                i: ours_is_bound(g.at[i, "task"], g.at[i, "row"], g.at[i, "factor_text"])
                for i in g.index
            }
        )
        worst = g.loc[sorted(g.index, key=lambda i: (g.at[i, "factor"], bound[i]))[-1]]
        pairs = zip(g["factor"], g["factor_text"], strict=True)
        within = sum(within_2x(f, t) == "yes" for f, t in pairs)
        out.append(
            {
                "ab_lr": lr,
                "init": init,
                "worst factor": worst["factor_text"],
                "worst": float(worst["factor"]),
                "worst is bound": bool(bound[worst.name]),
                "worst row": f"{worst['task']} {worst['row']}",
                "geometric mean": math.exp(sum(math.log(f) for f in g["factor"]) / len(g)),
                # as the paper table counts them: a bound (">2", not reached by twice
                # the paper's n*) is not within 2x, though its factor reads 2
                "rows within 2x": f"{within}/{len(g)}",
            }
        )
    table = pd.DataFrame(out)
    if table.empty:
        return table
    return table.sort_values(["worst", "worst is bound", "geometric mean"]).reset_index(drop=True)


def plot(rows: pd.DataFrame, settings: pd.DataFrame, path: Path) -> None:
    """The worst factor per setting (bars, best first; hatched where it is a bound)
    with every row's factor (filled marks; hollow where the factor is a bound: the
    row was not reached by the largest n searched, or reached at the smallest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r.init}\nab lr {r.ab_lr:g}" for r in settings.itertuples()]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(labels) + 2), 4.8))
    x = range(len(labels))
    ax.bar(x, settings["worst"], color="#ccc", label="worst row (exact)")
    bound = settings["worst is bound"].to_numpy()
    ax.bar(
        [i for i in x if bound[i]],
        settings["worst"][bound],
        color="#ccc",
        hatch="//",
        edgecolor="#888",
        label="worst row (a bound: may be larger)",
    )
    markers = "osD^vP*X"
    for k, ((task, row), _g) in enumerate(rows.groupby(["task", "row"])):
        exact, bounds = [], []
        for i, r in enumerate(settings.itertuples()):
            hit = rows[
                (rows["ab_lr"] == r.ab_lr)
                & (rows["init"] == r.init)
                & (rows["task"] == task)
                & (rows["row"] == row)
            ].iloc[0]
            is_bound = str(hit["factor_text"]).startswith(">")
            (bounds if is_bound else exact).append((i, float(hit["factor"])))
        style = {"marker": markers[k % len(markers)], "ls": "none", "color": f"C{k}"}
        for points, fill in ((exact, {}), (bounds, {"mfc": "none", "ms": 9})):
            if points:
                xs, ys = zip(*points, strict=True)
                label = f"{task} {row}" if points is exact or not exact else None
                ax.plot(xs, ys, label=label, **style, **fill)
    ax.axhline(2, color="k", ls="--", lw=0.8, label="2x")
    ax.set_yscale("log", base=2)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("n* mismatch factor vs the paper (log2)")
    ax.set_title(
        "protocol search: worst row per setting (bars), each row (marks; hollow = a bound)"
    )
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m probe.experiments.protocol_search", description=__doc__
    )
    parser.add_argument("folder", help="the search's results folder, e.g. results/paper/search")
    parser.add_argument("--threshold", type=float, default=THRESHOLD)
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        parser.error(f"{args.folder!r} is not a folder; pass results/paper/search")
    try:
        rows = row_table(folder, args.threshold)
    except (FileNotFoundError, ValueError) as e:
        parser.exit(2, f"protocol_search: error: {e}\n")
    settings = setting_table(rows)
    rows.drop(columns="factor").to_csv(folder / "rows.csv", index=False)
    (folder / "rows.md").write_text(markdown_table(rows.drop(columns="factor")) + "\n")
    settings.to_csv(folder / "settings.csv", index=False)
    (folder / "settings.md").write_text(markdown_table(settings) + "\n")
    if not settings.empty:
        plot(rows, settings, folder / "worst_ratio.png")
    print(markdown_table(settings) if not settings.empty else "no complete setting yet")


if __name__ == "__main__":
    main()
