"""Identity structure of attention heads: how close W_Q W_Kᵀ and W_V W_O are to a·I.

For every head of every attention layer, ``attn_diagonal(model)`` scores two
``[d_model, d_model]`` matrices (in the ``x @ W`` convention of
``probe.models.architectures``):

- ``qk``: ``M = scaling · W_Q[h] W_K[g]ᵀ``, the bilinear form of the logits
  ``X M Xᵀ`` (``scaling`` is the model's 1/√d_head; 1 for T5). The paper writes
  its transpose ``W_K W_Qᵀ``, which has the same scores. With RoPE
  (Llama family) this is the content term at relative position 0.
- ``ov``: ``M = W_V[g] W_O[h]``, the map from a token's input to what the head
  writes back, ``A X M``.

``g`` is the key/value head that query head ``h`` reads under grouped-query
attention. An injected identity scaling adds ``a·I`` to ``qk`` and ``b·I`` to
``ov`` (see ``probe.models.identity``), so ``a_star`` below is directly comparable
with a trained ``a`` or ``b``.

Each matrix is ``M = L Rᵀ`` with ``L, R: [d_model, r]``, ``r = d_head``, so every
score comes from ``r``-sized products and the full matrix is never built:
``trace M = Σ L⊙R``, ``‖M‖²_F = ⟨LᵀL, RᵀR⟩``, ``diag M`` is a row-wise dot
product and the nonzero eigenvalues of ``L Rᵀ`` are those of ``Rᵀ L``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from probe.analysis import EFFECTIVE_SCORES, MATRICES, SCORES  # noqa: F401 (their home)
from probe.models.architectures import AttentionSite, attention_sites, head_weights
from probe.models.identity import MODULE_NAME


@dataclass
class HeadFactors:
    """One layer's matrices of one kind, for all its heads, as ``M[h] = left[h] @ right[h]ᵀ``.

    ``left``, ``right``: [n_heads, d_model, r]; ``identity_diag``: [d_model] or None — the
    diagonal that an identity scaling ``c`` adds as ``c · diag(identity_diag)`` in this basis
    (None: the plain identity, i.e. no norm gain was folded in).
    """

    left: torch.Tensor
    right: torch.Tensor
    identity_diag: torch.Tensor | None
    scaling: float


def _gain(norm: nn.Module | None, d_model: int) -> torch.Tensor | None:
    weight = getattr(norm, "weight", None)
    if weight is None or weight.shape != (d_model,):
        return None
    return weight.detach().float()


def norm_gains(
    model: nn.Module, site: AttentionSite
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gains [d_model] of the norms feeding the queries and the keys/values (None: none)."""
    if site.spec.input_norms is None:
        return None, None
    norm_q, norm_kv = site.spec.input_norms(model, site.name)
    return _gain(norm_q, site.d_model), _gain(norm_kv, site.d_model)


def head_factors(
    site: AttentionSite, matrix: str, gains: tuple[torch.Tensor | None, torch.Tensor | None]
) -> HeadFactors:
    """The factors of ``site``'s ``qk`` or ``ov`` matrices, float32, with ``gains`` folded in.

    ``gains`` = (query-side, key/value-side) norm gains [d_model] or None. Folding multiplies
    row i of W_Q by the query-side gain γ_i and rows of W_K, W_V by the key/value-side gain,
    so M becomes the bilinear form on the normalized input before the norm's gain.
    """
    if matrix not in MATRICES:
        raise ValueError(f"matrix must be one of {MATRICES}, got {matrix!r}")
    w_q, w_k, w_v, w_o = (w.float() for w in head_weights(site))
    # grouped-query attention: query head h reads key/value head h // (n_heads / n_kv_heads)
    group = torch.arange(site.n_heads) // (site.n_heads // site.n_kv_heads)
    g_q, g_kv = gains
    if matrix == "qk":
        left, right = w_q * site.scaling, w_k[group]
        if g_q is not None:
            left = left * g_q[:, None]
        if g_kv is not None:
            right = right * g_kv[:, None]
        # the identity term a·X Xᵀ is Γ_q (a I) Γ_kv in the folded basis
        diag = _product(g_q, g_kv)
        return HeadFactors(left, right, diag, site.scaling)
    left, right = w_v[group], w_o.transpose(1, 2)
    if g_kv is not None:
        left = left * g_kv[:, None]
    # the head's output b·A X is b·A X̂ Γ_kv in the folded basis
    return HeadFactors(left, right, g_kv, 1.0)


def _product(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a * b


@dataclass
class Moments:
    """What every score is computed from, for ``M[h] = left[h] right[h]ᵀ``."""

    diag: torch.Tensor  # [n_heads, d_model]: diag M
    fro2: torch.Tensor  # [n_heads]: ‖M‖²_F
    eig: torch.Tensor  # [n_heads, min(r, d_model)] complex: M's eigenvalues but n_zero zeros
    n_zero: int


def moments(f: HeadFactors) -> Moments:
    """diag, ‖·‖²_F and eigenvalues of every head's M from r-sized products only."""
    left, right = f.left, f.right
    _, d, r = left.shape
    diag = torch.einsum("hdr,hdr->hd", left, right)
    gram = torch.einsum("hdr,hds->hrs", left, left) * torch.einsum("hdr,hds->hrs", right, right)
    fro2 = gram.sum((-1, -2)).clamp_min(0)  # ⟨LᵀL, RᵀR⟩; rounding can dip below 0
    if r <= d:  # the r eigenvalues of Rᵀ L, and d - r zeros
        return Moments(diag, fro2, _eigvals(right.transpose(1, 2) @ left), d - r)
    return Moments(diag, fro2, _eigvals(left @ right.transpose(1, 2)), 0)


def _eigvals(batch: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of [n, k, k] matrices. numpy's loop over small LAPACK calls runs on one
    thread; torch's parallel batch was 4-40x slower on a CPU shared with other jobs."""
    return torch.from_numpy(np.linalg.eigvals(batch.numpy()))


def head_scores(
    f: HeadFactors, c: torch.Tensor | None = None, m: Moments | None = None
) -> dict[str, np.ndarray]:
    """The ``SCORES`` of ``M[h] = left[h] right[h]ᵀ``, or with ``c`` [n_heads] given, the
    ``EFFECTIVE_SCORES`` of ``M[h] + c[h]·diag(identity_diag)``; each [n_heads] float32.
    ``m``: ``moments(f)`` when already computed."""
    m = moments(f) if m is None else m
    diag, fro2, eig, n_zero = m.diag, m.fro2, m.eig, m.n_zero
    _, d, r = f.left.shape
    w = f.identity_diag
    if c is None:
        abs_sum = eig.abs().sum(-1)
    else:
        if w is not None and bool((w == w[0]).all()):
            c, w = c * w[0], None  # a constant gain is a plain identity scaled by it
        w_vec = torch.ones(d) if w is None else w
        fro2 = (fro2 + 2 * c * (diag * w_vec).sum(-1) + c**2 * (w_vec**2).sum()).clamp_min(0)
        diag = diag + c[:, None] * w_vec
        if w is None:  # M + cI shifts M's eigenvalues by c, its d - r zeros included
            abs_sum = (eig + c[:, None]).abs().sum(-1) + n_zero * c.abs()
        else:
            # M + c·diag(w) has full rank and no low-rank shortcut: its eigenvalues would need
            # a d_model × d_model eigensolve per head (minutes for a 768-wide model)
            abs_sum = torch.where(c == 0, eig.abs().sum(-1), torch.nan)
    trace = diag.sum(-1)
    fro = fro2.sqrt()
    sqrt_d = d**0.5
    cos = trace / (fro * sqrt_d)
    out = {
        "trace": trace,
        "fro": fro,
        "a_star": trace / d,
        "cos_identity": cos,
        # a rank-r matrix has |cos| <= sqrt(r / d); an injected a·I lifts the rank to d
        "cos_identity_rel": cos / (min(r, d) / d) ** 0.5 if c is None else cos,
        "diag_energy": (diag**2).sum(-1) / fro2,
        # Re Σλ is the trace, computed exactly rather than summed from eigenvalues
        "copying_score": trace / abs_sum,
    }
    return {k: v.numpy().astype(np.float32) for k, v in out.items()}


def identity_scalings(site: AttentionSite) -> dict[str, torch.Tensor | None] | None:
    """The injected ``a`` (qk) and ``b`` (ov) of a site, [n_heads] each (None: that term is
    not injected); None if the site carries no identity scalings (``probe.models.identity``)."""
    ab = site.attention._modules.get(MODULE_NAME)
    if ab is None:
        return None
    # calling the module (not reading .a/.b) reaches peft's active copy when it wraps it
    a, b = ab()
    return {
        matrix: None if value is None else value.detach().float().reshape(-1)
        for matrix, value in (("qk", a), ("ov", b))
    }


@torch.no_grad()
def attn_diagonal(
    model: nn.Module, fold_layernorm: bool = False, include_cross: bool = True
) -> pd.DataFrame:
    """Identity structure of every head's ``qk`` and ``ov`` matrix (see the module docstring).

    One row per (attention layer, head, matrix) with columns ``site`` (module path),
    ``kind`` (self / encoder / decoder / cross), ``layer``, ``head``, ``kv_head``,
    ``matrix`` (``qk`` or ``ov``), ``d_model``, ``d_head``, ``scaling`` (the factor included
    in the matrix: the logits' scaling for ``qk``, 1 for ``ov``), and the scores of
    ``M: [d_model, d_model]``:

    - ``trace``, ``fro`` (Frobenius norm);
    - ``a_star = trace / d_model``: the least-squares ``a`` in ``M ≈ a·I``;
    - ``cos_identity = trace / (fro · √d_model)``: cosine between M and I;
      ``cos_identity_rel``: the same over its bound √(d_head / d_model) for a rank-d_head M;
    - ``diag_energy = ‖diag M‖² / ‖M‖²_F``;
    - ``copying_score = Re Σλ / Σ|λ|`` over M's eigenvalues (1 for a positive multiple of I).

    For a model with identity scalings injected (``probe.inject_ab``), also
    ``identity_scaling`` (the head's ``a`` for qk, ``b`` for ov; NaN where that term was not
    injected, e.g. cross-attention) and ``eff_<score>``: the scores of ``M + a·I``
    (``M + b·I``), i.e. the matrix the head actually applies (M itself where NaN).

    ``fold_layernorm=True`` multiplies the rows of W_Q, W_K, W_V by the gain γ of the
    LayerNorm / RMSNorm whose output they read (BERT: the previous layer's output norm; T5
    cross-attention keys and values: the encoder's final norm), so M is the form on the
    normalized input before its gain (``qk``: Γ_q M Γ_kv, ``ov``: Γ_kv M). Norm biases are
    dropped: they shift X by a constant and add no bilinear term. W_O is unchanged. The
    effective matrices become Γ_q (M + aI) Γ_kv and Γ_kv (M + bI): full rank, so where the
    gains are not all equal and the scaling is nonzero, ``eff_copying_score`` is NaN (its
    eigenvalues would need a d_model × d_model eigensolve per head; for one head, take
    ``torch.linalg.eigvals(head_matrix(..., fold_layernorm=True, effective=True))``).
    Without ``fold_layernorm`` the matrices act on the attention layer's actual input,
    which is also what the identity scalings act on.

    Float32 throughout; weights in, table out (the model is not changed).
    """
    frames = []
    sites = attention_sites(model, include_cross=include_cross)
    injected = any(identity_scalings(site) is not None for site in sites)
    for site in sites:
        gains = norm_gains(model, site) if fold_layernorm else (None, None)
        scalings = identity_scalings(site)
        if scalings is None and injected:  # e.g. cross-attention: the head applies M itself
            scalings = {"qk": None, "ov": None}
        for matrix in MATRICES:
            f = head_factors(site, matrix, gains)
            m = moments(f)
            cols: dict[str, object] = {
                "site": site.name,
                "kind": site.kind,
                "layer": site.layer,
                "head": np.arange(site.n_heads),
                "kv_head": np.arange(site.n_heads) // (site.n_heads // site.n_kv_heads),
                "matrix": matrix,
                "d_model": site.d_model,
                "d_head": site.d_head,
                "scaling": f.scaling,
                **head_scores(f, m=m),
            }
            if scalings is not None:
                c = scalings[matrix]
                # a term that was not injected: NaN scaling, and the head applies M itself
                cols["identity_scaling"] = np.nan if c is None else c.numpy()
                eff = head_scores(f, c, m)
                cols.update({f"eff_{k}": eff[k] for k in EFFECTIVE_SCORES})
            frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def find_site(model: nn.Module, layer: int, kind: str | None = None) -> AttentionSite:
    """The attention site at stack index ``layer`` (and ``kind``, needed for T5)."""
    sites = attention_sites(model)
    kinds = sorted({s.kind for s in sites})
    if kind is None and len(kinds) > 1:
        raise ValueError(f"this model has attention of kinds {kinds}; pass kind=one of them")
    match = [s for s in sites if s.layer == layer and (kind is None or s.kind == kind)]
    if not match:
        layers = sorted({s.layer for s in sites if kind is None or s.kind == kind})
        what = f"{kind} attention" if kind else "attention"
        raise ValueError(f"no {what} at layer {layer}; layers are {layers}")
    return match[0]


@torch.no_grad()
def head_matrix(
    model: nn.Module,
    layer: int,
    head: int,
    matrix: str = "qk",
    kind: str | None = None,
    block: int | None = None,
    fold_layernorm: bool = False,
    effective: bool = False,
) -> torch.Tensor:
    """One head's ``qk`` or ``ov`` matrix: [block, block] (its top-left block) or [d_model, d_model].

    ``effective=True`` adds the injected identity scaling (``a·I`` or ``b·I``).
    """
    site = find_site(model, layer, kind)
    if not 0 <= head < site.n_heads:
        raise ValueError(f"head {head} out of range: {site.name} has {site.n_heads} heads")
    gains = norm_gains(model, site) if fold_layernorm else (None, None)
    f = head_factors(site, matrix, gains)
    k = site.d_model if block is None else min(block, site.d_model)
    m = f.left[head, :k] @ f.right[head, :k].T
    c = (identity_scalings(site) or {}).get(matrix) if effective else None
    if c is not None:
        w = torch.ones(site.d_model) if f.identity_diag is None else f.identity_diag
        m = m + torch.diag(c[head] * w[:k])
    return m


def top_heads(
    df: pd.DataFrame, score: str = "cos_identity", n: int = 10, matrix: str | None = None
) -> pd.DataFrame:
    """The ``n`` rows with the largest ``score`` (optionally of one ``matrix``)."""
    if score not in df.columns:
        raise ValueError(f"unknown score {score!r}; the table has {list(df.columns)}")
    rows = df if matrix is None else df[df["matrix"] == matrix]
    return rows.nlargest(n, score)
