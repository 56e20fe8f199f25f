"""Attention on data: what each head attends to on rendered template samples.

``attn_diagonal`` reads the weights; this module runs the model on samples and
reads the attention probabilities it computes (eager attention, so on an
injected model they include the ``a_h X Xᵀ`` term)::

    df = probe.attention_scores(model, dsd, split="test", max_samples=256)
    df.sort_values("equality_score", ascending=False).head()
    probe.plot_attention(df).savefig("equality.png")            # layer x head
    probe.plot_attention(df, layer=0, head=2).savefig("maps.png")  # one head, per template

One row per (layer, head), with

- ``equality_score``: the attention mass a query on a symbol puts on the *other*
  positions holding the same symbol, minus what uniform attention over the keys
  it sees would put there, averaged over the queries that see such a position
  (in ``a b a`` under causal attention: the second ``a``). A head that looks
  for the equal token scores near 1 - 1/keys; one that ignores equality near 0.
- ``readout_to_symbols``: the mass the readout position (each row's last real
  token) puts on symbol positions, averaged over samples.
- ``self_mass``: the mass those same queries put on their own position.
- ``queries``: how many queries the equality score averages.

The score is signed: a head that *avoids* the equal token (a negative a_h, which
pushes down every large X Xᵀ entry: the query's own and its equal tokens')
scores near -1/keys, as far from 0 as one that seeks it.

``df.attrs["maps"]`` holds each template's mean attention map per layer and head
(``[layers, heads, seq, seq]`` over the samples of that template) and
``df.attrs["templates"]`` their texts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from probe.data.render import dataset_task, task_info
from probe.models.build import check_ids_fit
from probe.models.identity import ATTN_IMPLEMENTATION

SCORES = ("equality_score", "readout_to_symbols")


@contextlib.contextmanager
def _eager(model: nn.Module) -> Iterator[None]:
    """Attention computed eagerly for the block (an injected model's ``probe_ab``
    already is); the previous implementation restored after."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    before = base.config._attn_implementation
    if before in ("eager", ATTN_IMPLEMENTATION):
        yield
        return
    base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation(before)


def _is_causal(model: nn.Module) -> bool:
    """Whether a query sees only the keys up to its own position: the architecture's
    family, unless its config turns causality off (the ``paper`` model does)."""
    from probe.models.architectures import arch_spec

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base.config, "is_causal", None) is False:
        return False
    return arch_spec(base).family == "causal"


def _split(dataset: Any, split: str):
    if hasattr(dataset, "keys"):  # a DatasetDict
        if split not in dataset:
            raise ValueError(f"split {split!r} is not in the dataset; its splits: {list(dataset)}")
        return dataset[split], dataset
    return dataset, dataset


def _symbol_mask(ids: np.ndarray, real: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """Real positions that hold a symbol: neither a regular token nor the readout token."""
    not_symbols = [info["readout_token_id"]]
    not_symbols += [i for ids_ in info["regular_token_ids"].values() for i in ids_]
    return real & ~np.isin(ids, not_symbols)


def run_on_rows(model: nn.Module, input_ids, attention_mask, output: str) -> tuple:
    """Run ``model`` on rendered rows and return its per-layer ``output``
    (``"attentions"`` or ``"hidden_states"``): a decoder-only or encoder model's own,
    an encoder-decoder's encoder's (its encoder run alone: a classification head would
    need the whole input again in the decoder)."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        model = base.get_encoder()
    out = model(input_ids=input_ids, attention_mask=attention_mask, **{f"output_{output}": True})
    return getattr(out, output, None)


def _layer_attentions(model: nn.Module, input_ids, attention_mask) -> list[torch.Tensor]:
    """[batch, heads, seq, seq] per layer: the self-attention of a decoder-only or
    encoder model, the encoder's for an encoder-decoder."""
    attentions = run_on_rows(model, input_ids, attention_mask, "attentions")
    if not attentions or attentions[0] is None:
        raise ValueError(
            f"{type(model).__name__} returned no attention probabilities; probe.attention_scores "
            "needs a transformers model whose attention can run eagerly"
        )
    return list(attentions)


@torch.no_grad()
def attention_scores(
    model: nn.Module,
    dataset: Any,
    split: str = "test",
    max_samples: int | None = 512,
    batch_size: int = 64,
) -> pd.DataFrame:
    """Per-head attention scores on rendered samples (see the module docstring).

    ``dataset``: a rendered ``DatasetDict`` (``probe.render``, ``probe.load_dataset``)
    or one of its splits; ``max_samples``: the first N rows of ``split`` (None: all).
    """
    if max_samples is not None and (isinstance(max_samples, bool) or max_samples < 1):
        raise ValueError(f"max_samples={max_samples!r}: pass a positive number of rows, or None")
    rows, whole = _split(dataset, split)
    info, task = task_info(whole), dataset_task(whole)
    check_ids_fit(model, {split: rows})
    if max_samples is not None:
        rows = rows.select(range(min(max_samples, len(rows))))
    if len(rows) == 0:
        raise ValueError(f"split {split!r} has no rows to run the model on")
    cols = rows.with_format("numpy", columns=["input_ids", "attention_mask", "template"])[:]
    ids, real = np.asarray(cols["input_ids"]), np.asarray(cols["attention_mask"]).astype(bool)
    templates = np.asarray(cols["template"])
    symbols = _symbol_mask(ids, real, info)
    last = real.sum(1) - 1  # the readout position of each row
    seq = ids.shape[1]
    # the keys each query sees: real ones, and with causal attention none after it
    visible = real[:, None, :] & (np.tri(seq, dtype=bool)[None] if _is_causal(model) else True)

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    eq_mass: np.ndarray | None = None  # [layers, heads]
    ro_mass: np.ndarray | None = None
    self_mass: np.ndarray | None = None
    queries = 0
    map_sum: dict[int, np.ndarray] = {}
    map_count: dict[int, int] = {}
    try:
        with _eager(model):
            for start in range(0, len(ids), batch_size):
                sl = slice(start, start + batch_size)
                b_ids = torch.as_tensor(ids[sl], device=device)
                b_mask = torch.as_tensor(real[sl].astype(np.int64), device=device)
                layers = _layer_attentions(model, b_ids, b_mask)
                probs = torch.stack([a.float() for a in layers], dim=1).cpu().numpy()
                # probs: [batch, layers, heads, q, k]
                if eq_mass is None:
                    eq_mass = np.zeros(probs.shape[1:3])
                    ro_mass = np.zeros(probs.shape[1:3])
                    self_mass = np.zeros(probs.shape[1:3])
                b_sym, b_ids_np = symbols[sl], ids[sl]
                same = (b_ids_np[:, :, None] == b_ids_np[:, None, :]) & b_sym[:, :, None]
                same &= b_sym[:, None, :] & ~np.eye(seq, dtype=bool)[None]
                same_seen = same & visible[sl]  # [batch, q, k]
                n_same = same_seen.sum(-1)
                n_seen = visible[sl].sum(-1)
                counted = n_same > 0  # [batch, q]: queries that see an equal token
                on_same = (probs * same_seen[:, None, None]).sum(-1)  # [batch, layers, heads, q]
                excess = on_same - (n_same / np.maximum(n_seen, 1))[:, None, None]
                eq_mass += (excess * counted[:, None, None]).sum(axis=(0, 3))
                own = np.diagonal(probs, axis1=-2, axis2=-1)  # [batch, layers, heads, q]
                self_mass += (own * counted[:, None, None]).sum(axis=(0, 3))
                queries += int(counted.sum())
                rows_ = np.arange(probs.shape[0])
                at_readout = probs[rows_, :, :, last[sl], :]  # [batch, layers, heads, k]
                ro_mass += (at_readout * b_sym[:, None, None, :]).sum(-1).sum(0)
                for t in np.unique(templates[sl]):
                    pick = templates[sl] == t
                    map_sum[int(t)] = map_sum.get(int(t), 0) + probs[pick].sum(0)
                    map_count[int(t)] = map_count.get(int(t), 0) + int(pick.sum())
    finally:
        model.train(was_training)

    n_layers, n_heads = eq_mass.shape
    layer, head = np.meshgrid(range(n_layers), range(n_heads), indexing="ij")
    df = pd.DataFrame(
        {
            "layer": layer.ravel(),
            "head": head.ravel(),
            "equality_score": (eq_mass / max(queries, 1)).ravel() if queries else np.nan,
            "readout_to_symbols": (ro_mass / len(ids)).ravel(),
            "self_mass": (self_mass / max(queries, 1)).ravel() if queries else np.nan,
            "queries": queries,
            "samples": len(ids),
        }
    )
    df.attrs["maps"] = {t: map_sum[t] / map_count[t] for t in sorted(map_sum)}
    df.attrs["templates"] = {t: task.templates[t].text for t in sorted(map_sum)}
    df.attrs["model"] = _model_name(model)
    return df


def _model_name(model: nn.Module) -> str:
    """What the plots' titles call a model: where it was loaded from, else its architecture
    (``gpt2 (from scratch)``), with ``+ a/b`` for an injected one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    name = str(getattr(config, "_name_or_path", "") or "")
    name = name or f"{getattr(config, 'model_type', type(base).__name__)} (from scratch)"
    return name + (" + a/b" if getattr(config, "probe_ab", None) else "")
