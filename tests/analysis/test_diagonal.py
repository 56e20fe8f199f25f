"""attn_diagonal: the scores' math on hand-built heads, agreement with a brute-force
d_model × d_model computation on every architecture, identity scalings, plots and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from torch import nn
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTModel,
    T5Config,
    T5ForConditionalGeneration,
)

from probe.analysis.diagonal import SCORES, attn_diagonal, head_matrix, top_heads
from probe.analysis.plots import plot_diagonal, plot_distributions, plot_head, save_figure
from probe.cli.diagonal import load_model, main
from probe.models.architectures import attention_sites, head_weights

D, H = 32, 4  # tiny width and head count for the architecture tests


def _seeded(build, seed=0):
    torch.manual_seed(seed)
    return build().eval()


def tiny_gpt2(seed=0):
    return _seeded(
        lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=H, n_embd=D, vocab_size=50)), seed
    )


def tiny_t5(seed=0):
    config = T5Config(
        vocab_size=50, d_model=D, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=H
    )
    return _seeded(lambda: T5ForConditionalGeneration(config), seed)


def tiny_llama(seed=0, width=D, heads=H, kv_heads=2):
    config = LlamaConfig(
        vocab_size=50,
        hidden_size=width,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
    )
    return _seeded(lambda: LlamaForCausalLM(config), seed)


def tiny_bert(seed=0):
    config = BertConfig(
        vocab_size=50,
        hidden_size=D,
        num_hidden_layers=2,
        num_attention_heads=H,
        intermediate_size=64,
    )
    return _seeded(lambda: BertModel(config), seed)


BUILDERS = {"gpt2": tiny_gpt2, "t5": tiny_t5, "llama": tiny_llama, "bert": tiny_bert}


# --- brute force: the full d_model × d_model matrices, float64, straight from the definitions


def _norm_weight(model: nn.Module, path: str) -> np.ndarray:
    return model.get_submodule(path).weight.detach().double().numpy()


def _gains_by_hand(model: nn.Module, site) -> tuple[np.ndarray, np.ndarray]:
    """Gains of the norms feeding (queries, keys/values), looked up by hand per architecture."""
    i = site.layer
    kind = model.config.model_type
    if kind == "gpt2":
        g = _norm_weight(model, f"transformer.h.{i}.ln_1")
        return g, g
    if kind == "llama":
        g = _norm_weight(model, f"model.layers.{i}.input_layernorm")
        return g, g
    if kind == "bert":
        path = "embeddings.LayerNorm" if i == 0 else f"encoder.layer.{i - 1}.output.LayerNorm"
        g = _norm_weight(model, path)
        return g, g
    stack = "decoder" if site.kind in ("decoder", "cross") else "encoder"
    sub = 1 if site.kind == "cross" else 0
    g = _norm_weight(model, f"{stack}.block.{i}.layer.{sub}.layer_norm")
    return (g, _norm_weight(model, "encoder.final_layer_norm")) if site.kind == "cross" else (g, g)


def brute_matrices(model, site, fold=False) -> dict[str, list[np.ndarray]]:
    """Per head: the full qk and ov matrices [d_model, d_model], plus the identity term's
    diagonal (ones, or the folded gains)."""
    w_q, w_k, w_v, w_o = (w.double().numpy() for w in head_weights(site))
    rep = site.n_heads // site.n_kv_heads
    # grouped-query attention as transformers' repeat_kv does it
    w_k, w_v = np.repeat(w_k, rep, axis=0), np.repeat(w_v, rep, axis=0)
    g_q, g_kv = _gains_by_hand(model, site) if fold else (np.ones(site.d_model),) * 2
    qk = [
        site.scaling * (g_q[:, None] * w_q[h]) @ (g_kv[:, None] * w_k[h]).T
        for h in range(site.n_heads)
    ]
    ov = [(g_kv[:, None] * w_v[h]) @ w_o[h] for h in range(site.n_heads)]
    return {"qk": qk, "ov": ov, "qk_identity": g_q * g_kv, "ov_identity": g_kv}


def brute_scores(m: np.ndarray, d_head: int) -> dict[str, float]:
    d = m.shape[0]
    trace, fro = np.trace(m), np.linalg.norm(m)
    eig = np.linalg.eigvals(m)
    cos = trace / (fro * math.sqrt(d))
    return {
        "trace": trace,
        "fro": fro,
        "a_star": trace / d,
        "cos_identity": cos,
        "cos_identity_rel": cos / math.sqrt(min(d_head, d) / d),
        "diag_energy": np.sum(np.diag(m) ** 2) / fro**2,
        "copying_score": eig.sum().real / np.abs(eig).sum(),
    }


def assert_matches_brute(model, df, fold=False, effective=False, skip=()):
    sites = attention_sites(model)
    for site in sites:
        full = brute_matrices(model, site, fold)
        for matrix in ("qk", "ov"):
            rows = df[(df["site"] == site.name) & (df["matrix"] == matrix)].sort_values("head")
            assert len(rows) == site.n_heads
            for head, row in zip(range(site.n_heads), rows.itertuples(), strict=True):
                m = full[matrix][head]
                names = SCORES
                if effective:  # M + c·I has full rank: no rank-bound column
                    names = [s for s in SCORES if s != "cos_identity_rel"]
                    if not np.isnan(row.identity_scaling):
                        m = m + np.diag(row.identity_scaling * full[f"{matrix}_identity"])
                want = brute_scores(m, site.d_head)
                for name in (n for n in names if n not in skip):
                    got = getattr(row, f"eff_{name}" if effective else name)
                    assert got == pytest.approx(want[name], rel=2e-4, abs=1e-6), (
                        site.name,
                        matrix,
                        head,
                        name,
                    )


# --- the math on hand-built heads


def hand_built_gpt2(theta=(math.pi / 2, math.pi / 3)) -> GPT2LMHeadModel:
    """16 wide, 2 heads of 8: W_Q = W_K = W_V = I, and W_O rotating pairs of coordinates by
    theta[h] inside head h's 8 coordinates."""
    d, dh = 16, 8
    model = _seeded(
        lambda: GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=d, vocab_size=50))
    )
    eye = torch.eye(d)
    out = torch.zeros(d, d)
    for h, t in enumerate(theta):
        rot = torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])
        for k in range(h * dh, (h + 1) * dh, 2):
            out[k : k + 2, k : k + 2] = rot
    with torch.no_grad():
        model.transformer.h[0].attn.c_attn.weight.copy_(torch.cat([eye, eye, eye], dim=1))
        model.transformer.h[0].attn.c_proj.weight.copy_(out)
    return model


def test_identity_query_key_sits_at_the_rank_bound():
    df = attn_diagonal(hand_built_gpt2())
    qk = df[df["matrix"] == "qk"]
    scaling = 8**-0.5  # GPT-2's 1/sqrt(d_head) is part of the qk matrix
    # head h's W_Q W_Kᵀ is the projection onto its 8 coordinates: trace 8, Frobenius √8
    np.testing.assert_allclose(qk["trace"], 8 * scaling, rtol=1e-6)
    np.testing.assert_allclose(qk["fro"], math.sqrt(8) * scaling, rtol=1e-6)
    np.testing.assert_allclose(qk["a_star"], scaling * 8 / 16, rtol=1e-6)
    np.testing.assert_allclose(qk["cos_identity"], math.sqrt(8 / 16), rtol=1e-6)
    np.testing.assert_allclose(qk["cos_identity_rel"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(qk["diag_energy"], 1.0, rtol=1e-6)
    np.testing.assert_allclose(qk["copying_score"], 1.0, rtol=1e-6)


def test_rotating_output_copies_by_the_cosine_of_its_angle():
    # eigenvalues e^{±iθ}: copying score cos θ; a quarter turn is skew-symmetric (score 0)
    df = attn_diagonal(hand_built_gpt2(theta=(math.pi / 2, math.pi / 3)))
    ov = df[df["matrix"] == "ov"].set_index("head")
    assert ov.loc[0, "copying_score"] == pytest.approx(0.0, abs=1e-6)
    assert ov.loc[0, "trace"] == pytest.approx(0.0, abs=1e-6)
    assert ov.loc[0, "diag_energy"] == pytest.approx(0.0, abs=1e-6)
    assert ov.loc[1, "copying_score"] == pytest.approx(0.5, rel=1e-5)
    assert ov.loc[1, "cos_identity_rel"] == pytest.approx(0.5, rel=1e-5)
    assert ov.loc[1, "diag_energy"] == pytest.approx(0.25, rel=1e-5)
    # a half turn is -I on the head's coordinates
    flipped = attn_diagonal(hand_built_gpt2(theta=(math.pi, math.pi)))
    np.testing.assert_allclose(
        flipped.loc[flipped["matrix"] == "ov", "copying_score"], -1.0, rtol=1e-5
    )


def test_random_gaussian_heads_score_near_zero():
    d = 256
    df = attn_diagonal(tiny_llama(width=d, heads=8, kv_heads=8))
    assert df["cos_identity"].abs().max() < 0.03  # about 1/d for random weights
    assert df["copying_score"].abs().max() < 0.3
    assert df["diag_energy"].mean() < 3 / d  # about 1/d: the diagonal is 1/d of the entries


# --- every architecture against the brute force


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_scores_equal_brute_force(arch):
    model = BUILDERS[arch]()
    df = attn_diagonal(model)
    assert set(df["matrix"]) == {"qk", "ov"}
    assert_matches_brute(model, df)


@pytest.mark.parametrize("arch", sorted(BUILDERS))
def test_fold_layernorm_equals_brute_force(arch):
    model = BUILDERS[arch]()
    with torch.no_grad():  # fresh norms have gain 1, which would make folding invisible
        for module in model.modules():
            if (
                "norm" in type(module).__name__.lower()
                and getattr(module, "weight", None) is not None
            ):
                module.weight.uniform_(0.5, 1.5)
    folded = attn_diagonal(model, fold_layernorm=True)
    assert_matches_brute(model, folded, fold=True)
    assert not np.allclose(folded["trace"], attn_diagonal(model)["trace"])


def test_kinds_label_t5_stacks_and_cross_attention():
    df = attn_diagonal(tiny_t5())
    counts = df.groupby("kind").size().to_dict()
    # 2 layers × 4 heads × 2 matrices per stack
    assert counts == {"encoder": 16, "decoder": 16, "cross": 16}
    assert (df["scaling"] == 1.0).all()  # T5 folds the 1/sqrt(d) into W_Q
    assert len(attn_diagonal(tiny_t5(), include_cross=False)) == 32


def test_grouped_query_heads_share_their_key_value_head():
    df = attn_diagonal(tiny_llama(kv_heads=2))
    assert df.loc[df["layer"] == 0, "kv_head"].tolist()[:H] == [0, 0, 1, 1]


def test_head_matrix_is_the_brute_force_matrix():
    model = tiny_llama()
    site = attention_sites(model)[1]
    full = brute_matrices(model, site)
    for matrix in ("qk", "ov"):
        m = head_matrix(model, layer=1, head=3, matrix=matrix)
        np.testing.assert_allclose(m.numpy(), full[matrix][3], rtol=1e-4, atol=1e-7)
        block = head_matrix(model, layer=1, head=3, matrix=matrix, block=8)
        np.testing.assert_allclose(block.numpy(), full[matrix][3][:8, :8], rtol=1e-4, atol=1e-7)


def test_head_matrix_errors_name_the_choices():
    with pytest.raises(ValueError, match="kinds"):
        head_matrix(tiny_t5(), layer=0, head=0)
    with pytest.raises(ValueError, match="layers are"):
        head_matrix(tiny_gpt2(), layer=7, head=0)
    with pytest.raises(ValueError, match="4 heads"):
        head_matrix(tiny_gpt2(), layer=0, head=4)
    with pytest.raises(ValueError, match="matrix must be"):
        head_matrix(tiny_gpt2(), layer=0, head=0, matrix="vo")


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    opt = OPTModel(
        OPTConfig(
            hidden_size=16, num_attention_heads=2, ffn_dim=32, num_hidden_layers=1, vocab_size=50
        )
    )
    with pytest.raises(ValueError, match="supports: bert, gpt2, llama, t5"):
        attn_diagonal(opt)
    # the CLI's loader refuses from the config alone, before any weights are looked for
    opt.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture 'opt'"):
        load_model(str(tmp_path))


# --- identity scalings


def _inject(model, kq=True, vo=True, seed=1):
    from probe.models.identity import inject_ab

    inject_ab(model, kq=kq, vo=vo)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ab_scalings" in name:
                param.copy_(torch.randn(param.shape, generator=gen))
    return model


def test_injected_scalings_show_up_with_their_effective_scores():
    from probe.models.identity import ab_values

    model = _inject(tiny_gpt2())
    df = attn_diagonal(model)
    ab = ab_values(model)
    for matrix, column in (("qk", "a"), ("ov", "b")):
        rows = df[df["matrix"] == matrix].sort_values(["layer", "head"])
        np.testing.assert_allclose(
            rows["identity_scaling"], ab.sort_values(["layer", "head"])[column], rtol=1e-6
        )
    assert_matches_brute(model, df, effective=True)
    # the base scores do not change: they describe W_Q W_Kᵀ and W_V W_O alone
    pd.testing.assert_series_equal(df["cos_identity"], attn_diagonal(tiny_gpt2())["cos_identity"])


def test_injected_scalings_with_folded_gains_equal_brute_force():
    model = _inject(tiny_llama())
    with torch.no_grad():
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
    df = attn_diagonal(model, fold_layernorm=True)
    # Γ(M + aI)Γ is full rank: its copying score is left to a full eigensolve of head_matrix
    assert df["eff_copying_score"].isna().all()
    assert_matches_brute(
        model,
        df,
        fold=True,
        effective=True,
        skip=("copying_score",),
    )
    site = attention_sites(model)[0]
    full = brute_matrices(model, site, fold=True)
    a = model.model.layers[0].self_attn.ab_scalings.a[1].item()
    want = brute_scores(full["qk"][1] + np.diag(a * full["qk_identity"]), site.d_head)
    m = head_matrix(model, 0, 1, "qk", fold_layernorm=True, effective=True)
    eig = torch.linalg.eigvals(m.double())
    assert (eig.sum().real / eig.abs().sum()).item() == pytest.approx(
        want["copying_score"], rel=1e-4
    )


def test_terms_not_injected_leave_the_head_as_it_is():
    df = attn_diagonal(_inject(tiny_t5(), kq=True, vo=False))
    ov = df[df["matrix"] == "ov"]
    assert ov["identity_scaling"].isna().all()
    np.testing.assert_allclose(ov["eff_cos_identity"], ov["cos_identity"], rtol=1e-6)
    # cross-attention carries no scalings
    cross = df[df["kind"] == "cross"]
    assert cross["identity_scaling"].isna().all()
    np.testing.assert_allclose(cross["eff_trace"], cross["trace"], rtol=1e-6)
    assert (
        df.loc[(df["kind"] != "cross") & (df["matrix"] == "qk"), "identity_scaling"].notna().all()
    )


def test_effective_head_matrix_adds_the_scaling():
    model = _inject(tiny_gpt2())
    a = model.transformer.h[1].attn.ab_scalings.a[2].item()
    plain = head_matrix(model, 1, 2, "qk", block=8)
    eff = head_matrix(model, 1, 2, "qk", block=8, effective=True)
    np.testing.assert_allclose((eff - plain).numpy(), a * np.eye(8), atol=1e-6)


# --- pictures and the command line


def test_plot_diagonal_draws_a_panel_per_matrix():
    df = attn_diagonal(tiny_t5())
    fig = plot_diagonal(df, score="copying_score")
    assert isinstance(fig, Figure)
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == 2
    assert images[0].get_array().shape == (6, H)  # encoder, decoder, cross × 2 layers
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "enc 0" and labels[-1] == "cross 1"
    assert len(plot_diagonal(df, matrix="ov").axes) == 2  # one panel and its colour bar
    with pytest.raises(ValueError, match="unknown score"):
        plot_diagonal(df, score="cosine")


def test_plot_head_shows_the_matrix_block(tmp_path):
    model = tiny_llama()
    fig = plot_head(model, layer=0, head=1, matrix="ov", block=16)
    shown = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, head_matrix(model, 0, 1, "ov", block=16).numpy())
    path = save_figure(fig, tmp_path / "head.png")
    assert path.read_bytes()[:4] == b"\x89PNG"
    tables = {"a": attn_diagonal(model), "b": attn_diagonal(tiny_llama(seed=1))}
    assert isinstance(plot_distributions(tables, "cos_identity"), Figure)


def test_top_heads_ranks_by_score():
    df = attn_diagonal(hand_built_gpt2(theta=(0.0, math.pi)))
    top = top_heads(df, "copying_score", n=3)
    assert top["copying_score"].tolist() == pytest.approx([1.0, 1.0, 1.0])
    assert top_heads(df, "copying_score", n=1, matrix="ov")["head"].item() == 0


def test_cli_writes_table_and_pictures(tmp_path):
    from probe.cli import main as probe_main

    model = tiny_gpt2()
    model.save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    probe_main(["diagonal", "--model", str(tmp_path / "model"), "--out", str(out), "--top", "2"])
    table = pd.read_csv(out / "diagonal.csv")
    np.testing.assert_allclose(
        table["cos_identity"], attn_diagonal(model)["cos_identity"], rtol=1e-5
    )
    assert (out / "heatmap_cos_identity.png").exists()
    assert len(list(out.glob("head_L*_h*_*.png"))) == 2


def test_cli_from_scratch_is_seeded(tmp_path):
    tiny_gpt2().config.save_pretrained(tmp_path / "config")  # a config alone is enough
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        main(
            ["--model", str(tmp_path / "config"), "--from-scratch", "--seed", str(seed)]
            + ["--out", str(tmp_path / name), "--top", "0", "--score", "diag_energy"]
        )
        runs[name] = pd.read_csv(tmp_path / name / "diagonal.csv")
    pd.testing.assert_frame_equal(runs["a"], runs["b"])
    assert not np.allclose(runs["a"]["trace"], runs["c"]["trace"])
    assert (tmp_path / "a" / "heatmap_diag_energy.png").exists()
