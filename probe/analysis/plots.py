"""Pictures of attention heads' identity structure: layer × head heatmaps, one head's matrix.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), so no
pyplot state or interactive backend is touched; ``save_figure`` writes PNGs through Agg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import nn

from probe.analysis.diagonal import (
    MATRICES,
    find_site,
    head_factors,
    head_matrix,
    head_scores,
    identity_scalings,
    norm_gains,
)

MATRIX_TITLES = {"qk": "W_Q W_Kᵀ (logits)", "ov": "W_V W_O (output)"}
KIND_ORDER = {"self": 0, "encoder": 1, "decoder": 2, "cross": 3}
KIND_PREFIX = {"self": "", "encoder": "enc ", "decoder": "dec ", "cross": "cross "}
# scores that cannot be negative get a sequential colour map starting at 0
NONNEGATIVE = {"fro", "diag_energy", "eff_fro", "eff_diag_energy"}


def _grid(df: pd.DataFrame, score: str) -> tuple[np.ndarray, list[str]]:
    """[rows = (kind, layer), columns = head] values of ``score`` and the row labels."""
    table = df.pivot_table(index=["kind", "layer"], columns="head", values=score, aggfunc="first")
    order = sorted(table.index, key=lambda kl: (KIND_ORDER.get(kl[0], 9), kl[1]))
    table = table.loc[order]
    labels = [f"{KIND_PREFIX.get(k, k + ' ')}{layer}" for k, layer in table.index]
    return table.to_numpy(dtype=float), labels


def _colour_range(
    values: np.ndarray, score: str, vmax: float | None = None
) -> tuple[str, float, float]:
    finite = values[np.isfinite(values)]
    top = vmax if vmax is not None else float(np.abs(finite).max()) if finite.size else 1.0
    top = top or 1.0
    if score in NONNEGATIVE:
        return "viridis", 0.0, top
    return "RdBu_r", -top, top  # symmetric, so white is exactly zero


def plot_diagonal(
    df: pd.DataFrame,
    score: str = "cos_identity",
    matrix: str | None = None,
    vmax: float | None = None,
    title: str | None = None,
) -> Figure:
    """A layer × head heatmap of ``score`` from ``attn_diagonal``'s table, a panel per matrix.

    Rows are attention layers (T5: encoder, decoder, cross-attention stacks in turn),
    columns heads. Signed scores use a diverging map centred on 0. ``vmax`` fixes the colour
    range (default: each panel's largest magnitude), e.g. to draw two models on one scale;
    ``title`` goes above the panels.
    """
    if score not in df.columns:
        raise ValueError(f"unknown score {score!r}; the table has {list(df.columns)}")
    matrices = [m for m in MATRICES if m in set(df["matrix"])] if matrix is None else [matrix]
    if matrix is not None and matrix not in set(df["matrix"]):
        raise ValueError(
            f"matrix {matrix!r} is not in the table (it has {sorted(set(df['matrix']))})"
        )
    grids = [_grid(df[df["matrix"] == m], score) for m in matrices]
    n_rows, n_heads = grids[0][0].shape
    fig = Figure(figsize=(len(matrices) * (1.6 + 0.32 * n_heads), 1.4 + 0.2 * n_rows))
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, m, (values, labels) in zip(axes, matrices, grids, strict=True):
        cmap, lo, hi = _colour_range(values, score, vmax)
        image = ax.imshow(
            values, cmap=cmap, vmin=lo, vmax=hi, aspect="auto", interpolation="nearest"
        )
        ax.set_title(f"{score}: {MATRIX_TITLES.get(m, m)}", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        step = max(1, len(labels) // 30)
        ax.set_yticks(range(0, len(labels), step), labels[::step], fontsize=7)
        ax.set_xticks(range(values.shape[1]), range(values.shape[1]), fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


@torch.no_grad()
def plot_head(
    model: nn.Module,
    layer: int,
    head: int,
    matrix: str = "qk",
    block: int = 64,
    kind: str | None = None,
    fold_layernorm: bool = False,
    effective: bool = False,
) -> Figure:
    """The top-left ``block`` × ``block`` of one head's ``qk`` or ``ov`` matrix, as in the paper.

    A diagonal stripe in this picture is what ``cos_identity`` measures; the title carries
    the head's scores over the whole [d_model, d_model] matrix.
    """
    site = find_site(model, layer, kind)
    m = head_matrix(
        model,
        layer,
        head,
        matrix,
        site.kind,
        block,
        fold_layernorm=fold_layernorm,
        effective=effective,
    )
    f = head_factors(site, matrix, norm_gains(model, site) if fold_layernorm else (None, None))
    c = (identity_scalings(site) or {}).get(matrix) if effective else None
    s = head_scores(f, c)
    values = m.numpy()
    top = float(np.abs(values).max()) or 1.0
    fig = Figure(figsize=(4.6, 4.2))
    ax = fig.subplots()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-top, vmax=top, interpolation="nearest")
    k = values.shape[0]
    where = f"{KIND_PREFIX.get(site.kind, '')}layer {layer}, head {head}"
    ax.set_title(
        f"{where}: {MATRIX_TITLES.get(matrix, matrix)}"
        + (" + identity scaling" if c is not None else "")
        + f"\ntop-left {k}×{k} of {site.d_model}×{site.d_model}; "
        f"cos={s['cos_identity'][head]:.3f}, a*={s['a_star'][head]:.3g}, "
        f"copy={s['copying_score'][head]:.2f}",
        fontsize=8,
    )
    # x @ M: rows index the input side, columns the side it is compared with or written to
    ax.set_ylabel("query-side input dimension" if matrix == "qk" else "input dimension")
    ax.set_xlabel("key-side input dimension" if matrix == "qk" else "output dimension")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig


def plot_distributions(
    tables: dict[str, pd.DataFrame], score: str = "cos_identity", bins: int = 60
) -> Figure:
    """Histograms of ``score`` per matrix, one outline per table (e.g. pretrained vs random)."""
    matrices = [m for m in MATRICES if any(m in set(t["matrix"]) for t in tables.values())]
    values = np.concatenate([t[score].to_numpy(dtype=float) for t in tables.values()])
    values = values[np.isfinite(values)]
    edges = np.linspace(values.min(), values.max(), bins + 1) if values.size else bins
    fig = Figure(figsize=(4.2 * len(matrices), 3.2))
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, m in zip(axes, matrices, strict=True):
        for label, t in tables.items():
            v = t.loc[t["matrix"] == m, score].to_numpy(dtype=float)
            ax.hist(v[np.isfinite(v)], bins=edges, histtype="step", linewidth=1.4, label=label)
        ax.set_yscale("log")
        ax.set_title(f"{score}: {MATRIX_TITLES.get(m, m)}", fontsize=9)
        ax.set_xlabel(score)
        ax.set_ylabel("heads")
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    return fig


def plot_attention(
    df: pd.DataFrame,
    score: str = "equality_score",
    layer: int | None = None,
    head: int | None = None,
    vmax: float | None = None,
    title: str | None = None,
) -> Figure:
    """Pictures of ``attention_scores``' table: without ``layer``/``head``, a layer × head
    heatmap of ``score``; with both, that head's mean attention map per template
    (query rows, key columns, over the samples of the template), with a colour bar. The
    default titles name the model (``df.attrs["model"]``)."""
    model = df.attrs.get("model")
    named = f"{model}: " if model else ""
    if layer is None and head is None:
        if score not in df.columns:
            raise ValueError(f"unknown score {score!r}; the table has {list(df.columns)}")
        values = df.pivot_table(index="layer", columns="head", values=score).to_numpy(float)
        cmap, lo, hi = _colour_range(values, score, vmax)
        fig = Figure(figsize=(1.6 + 0.32 * values.shape[1], 1.4 + 0.25 * values.shape[0]))
        ax = fig.subplots()
        image = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, aspect="auto")
        ax.set_title(title or f"{named}{score} on data", fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(values.shape[1]), range(values.shape[1]), fontsize=7)
        ax.set_yticks(range(values.shape[0]), range(values.shape[0]), fontsize=7)
        fig.colorbar(image, ax=ax, shrink=0.8)
        fig.tight_layout()
        return fig
    if layer is None or head is None:
        raise ValueError("pass both layer= and head= for one head's maps, or neither")
    maps, texts = df.attrs.get("maps"), df.attrs.get("templates")
    if not maps:
        raise ValueError("the table carries no attention maps; make it with probe.attention_scores")
    n_layers, n_heads = next(iter(maps.values())).shape[:2]
    if not (0 <= layer < n_layers and 0 <= head < n_heads):
        raise ValueError(
            f"layer {layer}, head {head} is outside the model's {n_layers} layers x {n_heads} heads"
        )
    fig = Figure(figsize=(2.4 * len(maps) + 0.8, 2.8), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for ax, (t, m) in zip(axes, maps.items(), strict=True):
        tokens = texts[t].split()
        size = len(tokens) + 1  # the template's tokens, then the readout token
        image = ax.imshow(m[layer, head, :size, :size], cmap="viridis", vmin=0.0, vmax=1.0)
        labels = [*tokens, "out"]
        ax.set_xticks(range(size), labels, fontsize=7)
        ax.set_yticks(range(size), labels, fontsize=7)
        ax.set_title(texts[t], fontsize=8)
        ax.set_xlabel("key")
        ax.set_ylabel("query")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="attention probability")
    fig.suptitle(title or f"{named}layer {layer}, head {head}: mean attention", fontsize=9)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG (Agg) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


# curves of probe.linear_probe's table: column -> (legend, line style)
PROBE_CURVES = {
    "test": ("model", "-"),
    "random_test": ("random weights", "--"),
    "control_test": ("control labels", ":"),
}


def plot_linear_probe(df: pd.DataFrame, ax=None, title: str | None = None) -> Figure:
    """Test score per layer of ``probe.linear_probe``'s table: the model, its random-weight
    twin and the control labels (the curves present), chance as a grey line. Rows of
    several seeds (a ``seed`` column) are drawn as their mean with a min-max band."""
    fig = ax.figure if ax is not None else Figure(figsize=(5.5, 3.4))
    ax = ax if ax is not None else fig.add_subplot()
    for column, (label, style) in PROBE_CURVES.items():
        if column not in df:
            continue
        stats = df.groupby("layer")[column].agg(["mean", "min", "max"])
        (line,) = ax.plot(stats.index, stats["mean"], style, marker=".", label=label)
        if len(df) > len(stats):
            ax.fill_between(
                stats.index, stats["min"], stats["max"], color=line.get_color(), alpha=0.15
            )
    ax.axhline(df["chance"].mean(), color="grey", lw=0.8, label="chance (majority class)")
    metric = df["metric"].iloc[0]
    ax.set_xlabel("layer (0: embeddings)")
    ax.set_ylabel("test R²" if metric == "r2" else "test accuracy (unseen symbols)")
    if metric != "r2":
        ax.set_ylim(0.3, 1.02)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return fig
