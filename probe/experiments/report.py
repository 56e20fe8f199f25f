"""Sweep results -> sample-complexity curves, n* tables, CSV and a markdown summary.

The metric is the test loss on unseen symbols for regression tasks and the test
error for symbolic ones (a task's ``label_kind``, recorded in every row). Over
seeds, each (variant, n) gets a mean, a standard deviation and the min-max range.
``n*`` is the smallest n whose *mean* metric is at most the threshold
(``probe.experiments.sweep.THRESHOLD``, 0.05 as in the paper); a variant that never gets
there is reported as ``>N`` with N the largest n it was run at. Its ratio is
n* / n* of the baseline variant (the plain transformer, ``none``): a number in
``n_star.csv`` only where both n* were reached (the summary gives the bound,
``<0.25`` or ``>4``, otherwise); ``seeds_ok`` says how many seeds individually
reach the threshold at n* (``3/3``). Cells whose row says they failed
(``status`` ``diverged`` or ``failed``, see ``probe.experiments.sweep``) are
listed in the summary and left out of the curves and n*.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from probe.experiments.pool import OK, is_failed
from probe.experiments.recipe import THRESHOLD
from probe.files import check_folder
from probe.jsonl import read_rows
from probe.push import upload
from probe.train.config import SETTING, fields_with

if TYPE_CHECKING:  # pandas waits for results: `probe report --help` answers at once
    import pandas as pd

METRIC = {"regression": "test_loss", "symbolic": "test_error"}
CELL_KEYS = ["recipe", "variant", "n", "seed"]


def _files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("results*.jsonl"))
            if not found:
                raise FileNotFoundError(f"no results*.jsonl in folder {str(p)!r}")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            where = "" if p.is_absolute() else f" under the current folder {os.getcwd()}"
            committed = (
                "; the committed results live in results/ of the clone: run from its root, "
                "or pass the full path"
                if p.parts[:1] == ("results",)
                else ""
            )
            raise FileNotFoundError(f"results file {str(p)!r} does not exist{where}{committed}")
    return files


def load_results(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Merge sweep result files (shards, or folders holding them) into one frame.

    A cell present in several files keeps its last row. Rows without the sweep's
    cell keys (e.g. a bare finetune results.jsonl) are refused, naming the file.
    """
    files = _files(paths)
    rows = read_rows(files, required=CELL_KEYS)
    if not rows:
        raise ValueError(f"no rows in {[str(f) for f in files]}; run `probe sweep` first")
    import pandas as pd

    df = pd.DataFrame(rows)
    missing = [k for k in CELL_KEYS if k not in df.columns]
    if missing or df[CELL_KEYS].isna().any().any():
        raise ValueError(
            f"rows in {[str(f) for f in files]} lack the sweep keys {CELL_KEYS}; "
            f"report reads the files `probe sweep` writes"
        )
    if "variant_index" not in df.columns:
        df["variant_index"] = 0
    # rows written before sweeps recorded a status were all successful
    df["status"] = df["status"].fillna(OK) if "status" in df.columns else OK
    df = df.drop_duplicates(CELL_KEYS, keep="last")
    # a variant keeps one place: its latest row's (a recipe that gained a variant in the
    # middle shifts the index of those after it between older and newer rows)
    df["variant_index"] = df.groupby(["recipe", "variant"])["variant_index"].transform("last")
    return df.sort_values(["recipe", "variant_index", "variant", "n", "seed"]).reset_index(
        drop=True
    )


def metric_of(df: pd.DataFrame, metric: str | None = None) -> str:
    """The column to read: ``metric``, or the one the rows' label kind implies."""
    if metric is not None:
        if metric not in df.columns:
            raise ValueError(f"metric {metric!r} is not a column; columns: {sorted(df.columns)}")
        return metric
    kinds = set(df["label_kind"].dropna()) if "label_kind" in df.columns else set()
    if len(kinds) != 1:
        raise ValueError(
            f"rows have label kinds {sorted(kinds) or 'unknown'}; pass --metric "
            f"(test_loss or test_error)"
        )
    return METRIC[kinds.pop()]


def curves(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Per (recipe, variant, n): mean, std, min, max and count of the metric over seeds."""
    g = df.groupby(["recipe", "variant_index", "variant", "n"], sort=True)[metric]
    out = g.agg(["mean", "std", "min", "max", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out.drop(columns="variant_index")


def n_star(
    curve: pd.DataFrame,
    threshold: float = THRESHOLD,
    baseline: str | None = "none",
    rows: pd.DataFrame | None = None,
    metric: str | None = None,
    failed: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per (recipe, variant): n*, whether it was reached, the ratio to ``baseline``
    and, given the per-seed ``rows`` and their ``metric``, ``seeds_ok`` (``"2/3"``:
    the seeds at n* that individually reach the threshold).

    ``failed`` (the rows of failed cells) counts in ``seeds_ok`` (a failed seed is
    one that did not reach the threshold: ``"1/2"``), and an n below n* whose seeds
    all failed was never measured, so n* is only bounded there: ``n_star_text``
    ``"<=32"`` and ``unmeasured`` lists those n.

    ``curve`` is the frame :func:`curves` returns; variants keep its order. The
    numeric ``ratio`` is NaN unless both n* were reached; ``ratio_text`` bounds it
    where one was not.
    """
    import pandas as pd

    out = []
    for (recipe, variant), g in curve.groupby(["recipe", "variant"], sort=False):
        g = g.sort_values("n")
        hit = g[g["mean"] <= threshold]
        reached = not hit.empty
        n = int(hit["n"].iloc[0]) if reached else int(g["n"].max())
        r = {
            "recipe": recipe,
            "variant": variant,
            "n_star": n,
            "reached": reached,
            "n_star_text": str(n) if reached else f">{n}",
            "best_mean": float(g["mean"].min()),
            "seeds": int(g["count"].max()),
        }
        lost = pd.DataFrame(columns=["n"])
        if failed is not None and not failed.empty:
            lost = failed[(failed["recipe"] == recipe) & (failed["variant"] == variant)]
        if reached:
            below = sorted({int(x) for x in lost["n"] if x < n and x not in set(g["n"])})
            r["unmeasured"] = below
            if below:
                r["n_star_text"] = f"<={n}"
        if rows is not None and metric is not None:
            at = rows[(rows["recipe"] == recipe) & (rows["variant"] == variant) & (rows["n"] == n)]
            values = at[metric].dropna()
            seeds = len(values) + int((lost["n"] == n).sum())
            r["seeds_ok"] = f"{int((values <= threshold).sum())}/{seeds}"
        out.append(r)
    table = pd.DataFrame(out)
    table["ratio"] = float("nan")
    table["ratio_text"] = ""
    if baseline is None:
        return table
    for _recipe, g in table.groupby("recipe", sort=False):
        base = g[g["variant"] == baseline]
        if base.empty:
            continue
        b_n, b_reached = int(base["n_star"].iloc[0]), bool(base["reached"].iloc[0])
        for i, r in g.iterrows():
            ratio = r["n_star"] / b_n
            # An unreached n* is a lower bound: no number, but say which way the
            # ratio is bounded.
            if r["reached"] and b_reached:
                table.loc[i, "ratio"] = ratio
                text = "1" if r["variant"] == baseline else f"{ratio:.3g}"
            elif r["reached"]:
                text = f"<{ratio:.3g}"
            elif b_reached:
                text = f">{ratio:.3g}"
            else:
                text = "?"
            table.loc[i, "ratio_text"] = text
    return table


def plot_curves(
    curve: pd.DataFrame,
    path: str | os.PathLike,
    metric: str,
    threshold: float | None = THRESHOLD,
    band: str = "minmax",
    title: str | None = None,
) -> Path:
    """Metric vs n (log2 axis) per variant, mean line and a band over seeds, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if band not in ("minmax", "std"):
        raise ValueError(f"band={band!r}; use 'minmax' or 'std'")
    variants = list(dict.fromkeys(curve["variant"]))
    # Many variants come in pairs (plain / modified at one width, recipe order):
    # tab20 gives each pair one hue, dark and light, and the second is dashed.
    paired = len(variants) > 6
    cmap = plt.get_cmap("tab20" if paired else "tab10")
    fig, ax = plt.subplots(figsize=(7.6, 4.2), dpi=110)
    for i, v in enumerate(variants):
        g = curve[curve["variant"] == v].sort_values("n")
        color = cmap(i % cmap.N)
        ls = "--" if paired and i % 2 else "-"
        ax.plot(g["n"], g["mean"], marker="o", ms=3.5, color=color, ls=ls, label=v)
        lo, hi = (
            (g["min"], g["max"])
            if band == "minmax"
            else ((g["mean"] - g["std"]).clip(lower=0), g["mean"] + g["std"])
        )
        if (g["count"] > 1).any():
            ax.fill_between(g["n"], lo, hi, color=color, alpha=0.18, linewidth=0)
    if threshold is not None:
        ax.axhline(threshold, color="0.5", ls=":", lw=1, label=f"{threshold:g}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("n (training samples = train alphabet size)")
    label = {"test_loss": "test loss", "test_error": "test error"}.get(metric, metric)
    ax.set_ylabel(f"{label} on unseen symbols")
    # A log y axis, so the runs that succeed are told apart below the threshold;
    # values of exactly 0 (an error of 0) need a linear stretch at the bottom.
    low = curve["min"] if band == "minmax" else curve["mean"] - curve["std"]
    if (low > 0).all():
        ax.set_yscale("log")
    else:
        positive = curve.loc[curve["mean"] > 0, "mean"]
        floor = min([threshold or 1.0, *positive]) / 2
        ax.set_yscale("symlog", linthresh=floor)
        ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    # beside the axes, never over the curves
    ax.legend(
        fontsize=8,
        ncol=2 if len(variants) > 12 else 1,
        loc="upper left",
        bbox_to_anchor=(1.02, 1.0),
        borderaxespad=0.0,
    )
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _cell(x: object) -> str:
    if isinstance(x, float):
        return "–" if x != x else f"{x:.3g}"  # NaN: a cell not run (yet)
    return str(x)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub markdown table (pandas' to_markdown needs tabulate, not a dependency)."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in df.itertuples(index=False):
        cells = [_cell(x) for x in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _shared_settings(rows: pd.DataFrame) -> str:
    """``key=value`` for the settings every row's config has in common."""
    if "config" not in rows.columns:
        return ""
    configs = [c for c in rows["config"] if isinstance(c, dict)]
    if "model" in rows.columns and len(configs) == len(rows):
        # the model as the recipe names it, not the path it resolved to on one machine
        configs = [
            {**c, "model": m or c.get("model")} for c, m in zip(configs, rows["model"], strict=True)
        ]
    parts = []
    for k in fields_with(SETTING):  # the settings worth stating under a curve
        values = {repr(c.get(k)) for c in configs}
        if len(values) == 1 and configs and configs[0].get(k) not in (None, 0, ""):
            parts.append(f"{k}={configs[0][k]}")
    return ", ".join(parts)


def _codes(rows: pd.DataFrame) -> str:
    """The code versions the rows were made with; more than one is worth a warning."""
    if "code" not in rows.columns:
        return ""
    counts = rows["code"].dropna().value_counts()
    if len(counts) <= 1:
        return ", ".join(counts.index)
    listed = ", ".join(f"{c} ({k} cells)" for c, k in counts.items())
    return f"**mixed** — {listed}"


def cell_seconds(rows: pd.DataFrame) -> pd.Series:
    """Each row's cost in seconds: its ``wall_s`` (the cell's own process), or for a cell
    of a ``--pack K`` its pack's time over K (K cells shared it); NaN without wall_s."""
    if "wall_s" not in rows.columns:
        import pandas as pd

        return pd.Series(math.nan, index=rows.index)
    share = rows["wall_s"]
    if "packed" in rows.columns:
        share = share / rows["packed"].fillna(1)
    return share


def _packed_note(rows: pd.DataFrame) -> str:
    packed = int((rows["packed"].fillna(1) > 1).sum()) if "packed" in rows.columns else 0
    return f"; {packed} packed cells count their pack's over K" if packed else ""


def _compute(rows: pd.DataFrame) -> str:
    """The rows' cost: the sum of :func:`cell_seconds`, and the slowest n's mean per
    cell."""
    share = cell_seconds(rows)
    if share.isna().all():
        return ""
    wall = share.dropna()
    largest = share[rows["n"] == rows["n"].max()].dropna()
    per_cell = f"; {largest.mean():.0f} s per cell at n = {rows['n'].max()}" if len(largest) else ""
    return (
        f"{wall.sum() / 60:.0f} min of wall time over {len(wall)} cells (sum of wall_s"
        f"{_packed_note(rows)}){per_cell}"
    )


def write_report(
    paths: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    threshold: float | None = None,
    baseline: str | None = None,
    metric: str | None = None,
    band: str = "minmax",
) -> dict[str, Path]:
    """Merge ``paths`` and write curves.csv, n_star.csv, one PNG per recipe and summary.md.

    ``threshold`` and ``baseline`` default to what the recipe recorded in its rows
    (``THRESHOLD`` and ``none`` otherwise). Returns the written files by name.
    """
    out = Path(out)
    if threshold is not None and not (threshold > 0 and math.isfinite(threshold)):
        raise ValueError(
            f"--threshold {threshold:g} must be a positive number (n* is the smallest n whose "
            f"mean metric is <= it), e.g. {THRESHOLD:g}"
        )
    check_folder(out, "--out")
    everything = load_results(paths)
    if baseline is not None and baseline not in set(everything["variant"]):
        variants = list(dict.fromkeys(everything["variant"]))
        raise ValueError(
            f"--baseline {baseline!r} is not a variant of these results; pick one of {variants}"
        )
    failed_rows = everything[everything.apply(is_failed, axis=1)]
    df = everything.drop(index=failed_rows.index)
    if df.empty:
        first = failed_rows.iloc[0]
        raise ValueError(
            f"all {len(failed_rows)} cells in {[str(p) for p in paths]} failed (e.g. "
            f"{first['variant']} n={first['n']} seed={first['seed']}: {first.get('error')}); "
            f"nothing to report"
        )
    metric = metric_of(df, metric)
    if threshold is None:
        recorded = df["threshold"].dropna().unique() if "threshold" in df.columns else []
        threshold = float(recorded[0]) if len(recorded) == 1 else THRESHOLD
    if baseline is None and "baseline" in df.columns:
        recorded = df["baseline"].dropna().unique()
        # a recipe's `baseline: null` means no ratios
        baseline = str(recorded[0]) if len(recorded) == 1 else None
    elif baseline is None:
        baseline = "none"
    out.mkdir(parents=True, exist_ok=True)
    curve = curves(df, metric)
    table = n_star(curve, threshold, baseline, df, metric, failed=failed_rows)
    written = {"curves.csv": out / "curves.csv", "n_star.csv": out / "n_star.csv"}
    curve.to_csv(written["curves.csv"], index=False)
    table.drop(columns=["n_star_text", "ratio_text"]).to_csv(written["n_star.csv"], index=False)

    recipes = list(dict.fromkeys(df["recipe"]))
    md = [f"# {', '.join(recipes)}", ""]
    for recipe in recipes:
        sub = df[df["recipe"] == recipe]
        bad = failed_rows[failed_rows["recipe"] == recipe]
        png = "curves.png" if len(recipes) == 1 else f"curves-{recipe}.png"
        task = sub["task"].iloc[0] if "task" in sub.columns else "?"
        plot_curves(
            curve[curve["recipe"] == recipe],
            out / png,
            metric,
            threshold,
            band,
            title=recipe if recipe == task else f"{recipe} ({task})",
        )
        written[png] = out / png
        grid = sub["grid_cells"].max() if "grid_cells" in sub.columns else float("nan")
        done = len(sub) + len(bad)
        status = (
            f"{done} of {int(grid)} cells run"
            + (" (partial: the grid is not finished)" if done < grid else "")
            if grid == grid
            else f"{done} cells"
        ) + (f", {len(bad)} failed (left out of the curves and n*)" if len(bad) else "")
        t = table[table["recipe"] == recipe]
        cols = ["variant", "n_star_text", "ratio_text", "best_mean", "seeds_ok"]
        t = t[[c for c in cols if baseline is not None or c != "ratio_text"]].rename(
            columns={
                "n_star_text": f"n* ({metric} <= {threshold:g})",
                "ratio_text": f"n* / n*({baseline})",
                "best_mean": f"best mean {metric}",
                "seeds_ok": "seeds <= threshold at n*",
            }
        )
        failures = [
            f"- {r.variant} n={r.n} seed={r.seed}: {r.status} — {getattr(r, 'error', '') or '?'}"
            for r in bad.itertuples()
        ]
        description = (
            sub["description"].dropna().iloc[0]
            if "description" in sub.columns and sub["description"].notna().any()
            else ""
        )
        wide = curve[curve["recipe"] == recipe].pivot_table(
            index="variant", columns="n", values="mean", sort=False
        )
        wide.columns = [f"n={c}" for c in wide.columns]
        md += [
            # one recipe: the page's title already names it
            *([f"## {recipe}", ""] if len(recipes) > 1 else []),
            *([description, ""] if description else []),
            f"Task `{task}`; metric: {metric} on unseen symbols (mean over seeds); {status}.",
            "",
            *([f"Shared settings: {shared}.", ""] if (shared := _shared_settings(sub)) else []),
            *([f"Code: {codes}.", ""] if (codes := _codes(sub)) else []),
            *([f"Compute: {cost}.", ""] if (cost := _compute(sub)) else []),
            f"![{recipe}]({png})",
            "",
            markdown_table(t),
            "",
            f"Mean {metric} per n:",
            "",
            markdown_table(wide.reset_index()),
            "",
            *(["Failed cells:", "", *failures, ""] if failures else []),
        ]
    written["summary.md"] = out / "summary.md"
    written["summary.md"].write_text("\n".join(md))
    return written


# -- a report as a Hub dataset repository -------------------------------------------


def hub_files(
    paths: Sequence[str | os.PathLike], written: dict[str, Path] | None = None
) -> dict[str, Path]:
    """The files of a report's dataset repository, by their path in it: the results files
    read (``paths``), then what :func:`write_report` wrote (``written``), each under its
    own name. Two different files of one name are refused (report them one folder at a
    time, or rename one)."""
    files: dict[str, Path] = {}
    for file in [*_files(paths), *(written or {}).values()]:
        name = file.name
        if name in files and files[name].resolve() != file.resolve():
            raise ValueError(
                f"--push-to-hub: {str(files[name])!r} and {str(file)!r} would both be "
                f"{name!r} in the repository; push one results folder at a time, or rename one"
            )
        files[name] = file
    return files


def report_card(files: dict[str, Path], summary: str) -> str:
    """The dataset card of a pushed report: YAML ``configs`` naming the results rows as
    the data (``datasets.load_dataset(REPO_ID, "results")``), then ``summary.md``. The
    CSVs and PNGs are files of the repository, not configs: the loader reads every
    config of a repository with one builder, and the rows are the data."""
    from huggingface_hub import DatasetCardData

    results = sorted(n for n in files if n.endswith(".jsonl"))
    data = DatasetCardData(
        configs=[{"config_name": "results", "data_files": results}],
        tags=["probe", "template-tasks", "sample-complexity"],
    )
    return f"---\n{data.to_yaml()}\n---\n\n{summary}"


def push_report(
    paths: Sequence[str | os.PathLike],
    written: dict[str, Path],
    repo_id: str,
    flag: str = "--push-to-hub",
) -> str:
    """Upload a report (the files :func:`write_report` wrote, the results files it read,
    and a card made of ``summary.md``) to the dataset repository ``repo_id``, in one
    commit; returns the repository's URL."""
    files: dict[str, Path | bytes] = dict(hub_files(paths, written))
    summary = written["summary.md"].read_text(encoding="utf-8")
    files["README.md"] = report_card(files, summary).encode()
    return upload(
        files,
        repo_id,
        "dataset",
        f"probe report: {summary.splitlines()[0].lstrip('# ')}",
        flag=flag,
        retry="To push again, run the same `probe report` command",
    )
