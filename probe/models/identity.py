"""The identity scalings ``a_h``, ``b_h`` patched into Hugging Face attention.

Per attention layer and per head ``h`` (Boix-Adserà et al. 2024)::

    logits_h = scaling · Q_h K_hᵀ + a_h · X Xᵀ + mask          # "KQ identity": W_Q W_Kᵀ + a_h I
    output   = concat_h(A_h V_h) W_O + Σ_h b_h · A_h X          # "VO identity": W_V W_O + b_h I

``X`` [batch, seq, d_model] is the hidden state the attention module receives
(the LayerNorm's output: GPT-2, Llama and T5 normalize before attention; BERT
normalizes after, so its X is the previous layer's normalized output), and
``A_h`` [batch, seq, seq] are head h's attention probabilities after the
library's attention dropout, the same ones that multiply ``V_h``. The KQ term is
added after the ``1/sqrt(d_head)`` scaling (T5 has none) and before the mask
and softmax; the VO term after the output projection and before the output
dropout (and, in BERT, before the residual LayerNorm). Both scalars start at
0, so an injected model computes exactly what the eager original computes.

How the patch works (nothing is copied from the modeling files):

1. an attention function registered as ``"probe_ab"`` in transformers'
   ``AttentionInterface`` (with the eager mask in ``AttentionMaskInterface``:
   ``masking_utils`` builds no causal or padding mask at all for an
   implementation it does not know) adds ``a_h X Xᵀ`` to the additive mask and
   calls the model file's own ``eager_attention_forward``, which adds the mask
   to the scaled logits and returns the probabilities; it then forms
   ``Σ_h b_h A_h X``;
2. a forward pre-hook on every attention module records ``X``;
3. a forward hook on the output projection adds ``Σ_h b_h A_h X`` to its output.

``inject_ab`` switches the model to ``"probe_ab"`` (the terms need the
probabilities, which sdpa and flash kernels do not return, so the injected
model always computes attention eagerly) and ``remove_ab`` switches it back.
(GPT-2 configs with ``reorder_and_upcast_attn=True`` have a second eager path,
in float32 with the scaling folded into ``baddbmm``; the injected model uses the
plain one, equal up to rounding.)

Cross-attention (T5's decoder attending to the encoder; GPT-2 with
``add_cross_attention``) gets no scalings: ``X_dec X_encᵀ`` compares two
different sequences, so it is not an identity on either, and the paper's
terms are defined for self-attention only.

Cached decoding (``generate`` with past key values) is not supported: the KQ
term needs ``X`` of every key position, which transformers' cache does not
hold. Call injected models on whole sequences (``use_cache=False`` in
``generate``).

Saving and loading: ``a`` and ``b`` are parameters of an ``ABScalings`` module
(``<attention>.ab_scalings``), so ``save_pretrained`` writes them and
``config.probe_ab`` records the flags. ``from_pretrained`` alone builds the
plain architecture and drops them as unexpected keys; ``load_injected(path)``
loads, re-injects and restores them (or: build, ``inject_ab``, then
``load_state_dict``).

peft: call ``inject_ab`` before ``get_peft_model`` and name the module in
``LoraConfig(..., modules_to_save=["ab_scalings"])``; peft then trains (and
saves with the adapter) a copy of every ``ABScalings``, which the patch reaches
by calling the module, so the active adapter's copy is the one used.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from probe.models.architectures import ARCHITECTURES, AttentionSite, attention_sites

ATTN_IMPLEMENTATION = "probe_ab"  # the name registered in transformers' interfaces
CONFIG_KEY = "probe_ab"  # config attribute recording {"kq": bool or "rotated", "vo": bool}
ROTATED = "rotated"  # inject_ab(kq="rotated"): the KQ term in RoPE's rotated basis
_ROPE = "_probe_ab_rope"  # (cos, sin) of a RoPE layer, set by the pre-hook
MODULE_NAME = "ab_scalings"  # child of every injected attention module; peft's modules_to_save name

# Per-forward values kept in the attention module's __dict__ (plain attributes, not buffers).
_INPUT = "_probe_ab_input"  # X, set by the pre-hook, taken by the attention function
_VO_TERM = "_probe_ab_vo_term"  # Σ_h b_h A_h X, set by the attention function, taken by the hook
_RESTORE = "_probe_ab_restore"  # on the PreTrainedModel: {submodule path: attention implementation}

logger = logging.getLogger(__name__)


class ABScalings(nn.Module):
    """The identity scalings of one attention layer.

    ``a`` [n_heads] scales X Xᵀ in each head's logits; ``b`` [n_heads] scales
    A_h X in the layer's output. Either is ``None`` when its term is not
    injected. Both start at 0.

    ``forward()`` returns ``(a, b)``: the patch reads the scalars by calling the
    module, so that a wrapper standing in its place (peft's
    ``ModulesToSaveWrapper``) hands over its active copy.
    """

    def __init__(
        self,
        n_heads: int,
        kq: bool | str = True,
        vo: bool = True,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        self.n_heads = n_heads
        self.rotated = kq == ROTATED  # a_h (R_i x_i)ᵀ (R_j x_j) instead of a_h x_iᵀ x_j
        for name, enabled in (("a", bool(kq)), ("b", vo)):
            value = (
                nn.Parameter(torch.zeros(n_heads, device=device, dtype=dtype)) if enabled else None
            )
            self.register_parameter(name, value)

    def forward(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return self.a, self.b

    def extra_repr(self) -> str:
        kq = ROTATED if self.rotated else self.a is not None
        return f"n_heads={self.n_heads}, kq={kq}, vo={self.b is not None}"


# ---------------------------------------------------------------------------
# The patch: attention function and hooks


@functools.cache
def _eager_forward(attention_class: type) -> Callable:
    """The modeling file's own ``eager_attention_forward`` for an attention class."""
    module = sys.modules[attention_class.__module__]
    eager = getattr(module, "eager_attention_forward", None)
    if eager is None:
        raise TypeError(
            f"{module.__name__} defines no eager_attention_forward, which the identity "
            f"scalings wrap; {attention_class.__name__} cannot take them"
        )
    return eager


def ab_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager attention with the identity terms; registered as ``"probe_ab"``.

    query [batch, n_heads, q, d_head]; key, value [batch, n_kv_heads, k, d_head];
    attention_mask additive, broadcastable to [batch, n_heads, q, k].
    Returns the model's eager outputs: [batch, q, n_heads, d_head] and the
    probabilities [batch, n_heads, q, k].
    """
    eager = _eager_forward(type(module))
    scalings = module._modules.get(MODULE_NAME)
    if scalings is None:  # cross-attention, or a layer left alone
        return eager(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )

    x = module.__dict__.pop(_INPUT, None)  # [batch, seq, d_model]
    if x is None:
        raise RuntimeError(
            f"{type(module).__name__} computed attention without its forward pre-hook recording "
            "X; the identity scalings only work through the attention module's forward"
        )
    if x.shape[-2] != key.shape[-2]:
        raise ValueError(
            f"the identity scalings need X at every key position, but the attention got "
            f"{key.shape[-2]} keys for {x.shape[-2]} inputs (cached decoding); call the "
            "injected model on whole sequences, e.g. generate(..., use_cache=False)"
        )
    a, b = scalings()
    rope = module.__dict__.pop(_ROPE, None)
    if a is not None:
        if scalings.rotated:
            gram = _rotated_gram(module, x, rope, query.shape[-1])  # [batch, seq, seq]
        else:
            gram = torch.matmul(x, x.transpose(-1, -2))  # [batch, seq, seq]
        kq_term = a.view(1, -1, 1, 1) * gram.unsqueeze(1)  # [batch, n_heads, seq, seq]
        # The eager function adds the mask to the already-scaled logits: the term
        # goes in with the mask, and a = 0 leaves the mask (and the logits) bit-identical.
        attention_mask = kq_term if attention_mask is None else attention_mask + kq_term
    out, probs = eager(
        module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
    )
    if b is not None:
        # Σ_h b_h A_h X = (Σ_h b_h A_h) X: one [seq, seq] @ [seq, d_model] product per sample.
        mixed = torch.einsum("h,bhqk->bqk", b, probs)
        module.__dict__[_VO_TERM] = torch.matmul(mixed, x)  # [batch, seq, d_model]
    return out, probs


def _rotated_gram(
    module: nn.Module, x: torch.Tensor, rope: tuple | None, d_head: int
) -> torch.Tensor:
    """(R_i x_i)ᵀ (R_j x_j), [batch, seq, seq]: X cut into d_head-wide chunks, each rotated
    by the layer's own RoPE (its ``cos``, ``sin`` and ``rotate_half``), the chunks' dot
    products summed. Equals x_iᵀ R_(j-i) x_j: it depends on the relative position, as
    the model's own logits do."""
    if rope is None:
        raise RuntimeError(
            f"{type(module).__name__} got no position_embeddings (cos, sin); kq='rotated' "
            "needs a RoPE attention layer"
        )
    cos, sin = rope  # [batch, seq, d_head]
    rotate_half = sys.modules[type(module).__module__].rotate_half
    batch, seq, width = x.shape
    if width % d_head:
        raise ValueError(f"X's width {width} is not a multiple of the head width {d_head}")
    chunks = x.view(batch, seq, width // d_head, d_head).transpose(1, 2)  # [b, chunks, seq, dh]
    rotated = chunks * cos.unsqueeze(1) + rotate_half(chunks) * sin.unsqueeze(1)
    return torch.matmul(rotated, rotated.transpose(-1, -2)).sum(1)


def _record_input(module: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook on an attention module: keep X for the attention function."""
    implementation = module.config._attn_implementation
    if implementation != ATTN_IMPLEMENTATION:
        raise RuntimeError(
            f"{type(module).__name__} carries identity scalings but its model computes attention "
            f"with {implementation!r}; inject_ab set {ATTN_IMPLEMENTATION!r}. Call remove_ab() "
            "before changing the attention implementation"
        )
    module.__dict__[_INPUT] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
    if kwargs.get("position_embeddings") is not None:  # RoPE: (cos, sin)
        module.__dict__[_ROPE] = kwargs["position_embeddings"]


def _add_vo_term(attention: nn.Module, projection: nn.Module, args: tuple, output: torch.Tensor):
    """Forward hook on the output projection: add Σ_h b_h A_h X, [batch, seq, d_model]."""
    term = attention.__dict__.pop(_VO_TERM, None)
    if term is None:
        raise RuntimeError(
            f"the output projection of {type(attention).__name__} ran without its attention "
            "computing the VO identity term; was the attention implementation changed after inject_ab?"
        )
    return output + term


AttentionInterface.register(ATTN_IMPLEMENTATION, ab_attention_forward)
AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


# ---------------------------------------------------------------------------
# Public API


def _pretrained(model: nn.Module) -> PreTrainedModel:
    """The transformers model inside ``model`` (itself, or the one a peft wrapper holds)."""
    for module in model.modules():
        if isinstance(module, PreTrainedModel):
            return module
    raise TypeError(f"{type(model).__name__} holds no transformers PreTrainedModel")


def _injected(sites: list[AttentionSite]) -> list[AttentionSite]:
    return [s for s in sites if MODULE_NAME in s.attention._modules]


def inject_ab(model: nn.Module, kq: bool | str = True, vo: bool = True) -> nn.Module:
    """Add trainable identity scalings (zeros) to every self-attention head of ``model``.

    kq: add ``a_h · X Xᵀ`` to head h's logits; ``kq="rotated"`` (RoPE models:
    Llama family) adds ``a_h (R_i x_i)ᵀ (R_j x_j)`` instead, X rotated by the
    layer's own rotary embedding in d_head-wide chunks, so the term depends on
    the relative position as the model's ``q_iᵀ k_j`` does (the literal reading
    of ``W_Q W_Kᵀ + a I`` in a RoPE model, whose W_Q W_Kᵀ acts between rotated
    vectors). vo: add ``Σ_h b_h · A_h X`` to the attention output. Modifies ``model`` in place and returns it. Each
    self-attention module gets a child ``ab_scalings`` (``ABScalings``) and
    ``model.config.probe_ab`` records the flags. Injecting twice is an error:
    call ``remove_ab`` first.
    """
    if not (isinstance(kq, bool) or kq == ROTATED):
        raise TypeError(f"kq must be True, False or {ROTATED!r}, got {kq!r}")
    if not isinstance(vo, bool):
        raise TypeError(f"vo must be True or False, got {vo!r}")
    if not (kq or vo):
        raise ValueError("inject_ab(kq=False, vo=False) injects nothing; enable kq, vo or both")
    sites = [s for s in attention_sites(model) if s.kind != "cross"]
    if _injected(sites):
        raise ValueError(
            f"{type(model).__name__} already carries identity scalings "
            f"({getattr(model.config, CONFIG_KEY, None)}); call remove_ab(model) before injecting again"
        )
    for site in sites:  # fail before changing anything
        _eager_forward(type(site.attention))
        if kq == ROTATED and not site.spec.rotary:
            raise ValueError(
                f"kq={ROTATED!r} rotates X by the layer's rotary embedding, but "
                f"{site.spec.model_type} has none; use kq=True (RoPE models: "
                f"{', '.join(k for k, v in ARCHITECTURES.items() if v.rotary)})"
            )
    pretrained = _pretrained(model)
    restore = {
        path: sub.config._attn_implementation
        for path, sub in pretrained.named_modules()
        if isinstance(sub, PreTrainedModel)
    }
    pretrained.set_attn_implementation(ATTN_IMPLEMENTATION)
    pretrained.__dict__[_RESTORE] = restore

    for site in sites:
        weight = next(site.output_projection.parameters())
        scalings = ABScalings(site.n_heads, kq, vo, device=weight.device, dtype=weight.dtype)
        site.attention.add_module(MODULE_NAME, scalings)
        site.attention.register_forward_pre_hook(_record_input, with_kwargs=True)
        if vo:
            site.output_projection.register_forward_hook(
                functools.partial(_add_vo_term, site.attention)
            )
    setattr(pretrained.config, CONFIG_KEY, {"kq": kq, "vo": vo})
    return model


def _is_ours(hook: Callable) -> bool:
    return hook is _record_input or (
        isinstance(hook, functools.partial) and hook.func is _add_vo_term
    )


def remove_ab(model: nn.Module) -> nn.Module:
    """Undo ``inject_ab``: drop the scalings, hooks and config record, restore the attention
    implementation. Modifies ``model`` in place and returns it."""
    sites = _injected(attention_sites(model))
    if not sites:
        raise ValueError(f"{type(model).__name__} carries no identity scalings to remove")
    for site in sites:
        del site.attention._modules[MODULE_NAME]
        for module in (site.attention, site.output_projection):
            for hooks in (module._forward_pre_hooks, module._forward_hooks):
                for key in [k for k, hook in hooks.items() if _is_ours(hook)]:
                    del hooks[key]
                    module._forward_hooks_with_kwargs.pop(key, None)
                    module._forward_pre_hooks_with_kwargs.pop(key, None)
            for stash in (_INPUT, _VO_TERM):
                module.__dict__.pop(stash, None)
    pretrained = _pretrained(model)
    restore = pretrained.__dict__.pop(_RESTORE, {})
    for path, sub in pretrained.named_modules():
        if isinstance(sub, PreTrainedModel) and path in restore:
            # Set directly: set_attn_implementation would re-validate and might pick another default.
            sub.config._attn_implementation_internal = restore[path]
    if hasattr(pretrained.config, CONFIG_KEY):
        delattr(pretrained.config, CONFIG_KEY)
    return model


def ab_values(model: nn.Module) -> pd.DataFrame:
    """The current scalings, a row per (attention layer, head).

    Columns: ``layer`` (index within its stack), ``head``, ``a``, ``b`` (NaN
    where that term is not injected) and ``module`` (the site's kind: ``self``,
    or ``encoder`` / ``decoder`` for T5).
    """
    sites = _injected(attention_sites(model))
    if not sites:
        raise ValueError(
            f"{type(model).__name__} carries no identity scalings; call probe.inject_ab(model) first"
        )
    rows = []
    for site in sites:
        a, b = site.attention._modules[MODULE_NAME]()
        nan = [math.nan] * site.n_heads
        a = nan if a is None else a.detach().float().tolist()
        b = nan if b is None else b.detach().float().tolist()
        for head in range(site.n_heads):
            rows.append(
                {"layer": site.layer, "head": head, "a": a[head], "b": b[head], "module": site.kind}
            )
    return pd.DataFrame(rows, columns=["layer", "head", "a", "b", "module"])


def ab_scalars(model: nn.Module) -> dict[str, float]:
    """Every head's a and b as flat tracker scalars (``a/L0/h1``, ``b/dec/L1/h0`` for a
    T5 stack); empty for a model without scalings (an MLP baseline included)."""
    if not any(isinstance(m, ABScalings) for m in model.modules()):
        return {}
    df = ab_values(model)
    out = {}
    for row in df.itertuples(index=False):
        stack = "" if row.module == "self" else f"{row.module[:3]}/"
        for name in ("a", "b"):
            value = getattr(row, name)
            if not math.isnan(value):
                out[f"{name}/{stack}L{row.layer}/h{row.head}"] = value
    return out


# ---------------------------------------------------------------------------
# Loading a saved injected model


def _saved_scalings(path: str | Path, **hub_kwargs) -> dict[str, torch.Tensor]:
    """Every ``*.ab_scalings.*`` tensor of a safetensors checkpoint (single file or sharded)."""
    from safetensors import safe_open
    from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

    index = cached_file(
        str(path),
        SAFE_WEIGHTS_INDEX_NAME,
        _raise_exceptions_for_missing_entries=False,
        **hub_kwargs,
    )
    if index is not None:
        shards = sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
        files = [cached_file(str(path), shard, **hub_kwargs) for shard in shards]
    else:
        files = [cached_file(str(path), SAFE_WEIGHTS_NAME, **hub_kwargs)]
    tensors = {}
    for file in files:
        with safe_open(file, framework="pt") as f:
            for key in f.keys():
                if f".{MODULE_NAME}." in key:
                    tensors[key] = f.get_tensor(key)
    return tensors


def _match_key(key: str, saved: dict[str, torch.Tensor]) -> str:
    """The saved key for a model key; prefixes differ when saved by another head class
    (``transformer.h.0...`` vs ``h.0...``)."""
    if key in saved:
        return key
    found = [s for s in saved if s.endswith("." + key) or key.endswith("." + s)]
    if len(found) != 1:
        raise KeyError(f"no unique saved tensor for {key!r} among {sorted(saved)[:4]}...")
    return found[0]


_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "subfolder")


class _DropLoadReport(logging.Filter):
    """Hides transformers' load report, which lists the scalings as unexpected keys;
    ``load_injected`` reports the other keys itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "LOAD REPORT" not in record.getMessage()


def load_injected(path: str | Path, model_class: type | None = None, **kwargs) -> PreTrainedModel:
    """Load a model saved with ``save_pretrained`` after ``inject_ab``, scalings included.

    ``model_class`` defaults to the class recorded in the saved config
    (``config.architectures[0]``); ``kwargs`` go to ``from_pretrained``. A
    checkpoint saved without scalings loads as the plain model.
    """
    import transformers
    from transformers import AutoConfig

    from probe.models.resolve import resolve_model

    ref = resolve_model(path, kwargs.get("gguf_file"))  # a missing path fails here, clearly
    if ref.kind != "checkpoint":
        raise ValueError(f"load_injected loads a saved checkpoint; {str(path)!r} is not one")
    if ref.local:
        path = ref.source
    else:  # a Hub id: cached, or the Hub answers (else a clear error now)
        ref.load_config()
    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    config = AutoConfig.from_pretrained(str(path), **hub_kwargs)
    if model_class is None:
        names = getattr(config, "architectures", None) or []
        if not names or not hasattr(transformers, names[0]):
            raise ValueError(
                f"the config in {path} names no transformers class (architectures={names!r}); "
                "pass model_class=, e.g. transformers.GPT2LMHeadModel"
            )
        model_class = getattr(transformers, names[0])
    flags = getattr(config, CONFIG_KEY, None)
    if not flags:
        return model_class.from_pretrained(str(path), **kwargs)

    # from_pretrained builds the plain architecture and skips the scalings as unexpected
    # keys; they are read from the checkpoint after injecting.
    report_logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadReport()
    report_logger.addFilter(drop)
    try:
        model, info = model_class.from_pretrained(str(path), output_loading_info=True, **kwargs)
    finally:
        report_logger.removeFilter(drop)
    others = {
        kind: sorted(str(k) for k in keys if f".{MODULE_NAME}." not in str(k))
        for kind, keys in info.items()
        if kind in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    if any(others.values()):
        logger.warning("loading %s: %s", path, {k: v for k, v in others.items() if v})

    delattr(model.config, CONFIG_KEY)  # inject_ab records it again
    inject_ab(
        model, kq=flags["kq"] if flags["kq"] == ROTATED else bool(flags["kq"]), vo=bool(flags["vo"])
    )
    saved = _saved_scalings(path, **hub_kwargs)
    wanted = [k for k in model.state_dict() if f".{MODULE_NAME}." in k]
    state = {k: saved[_match_key(k, saved)] for k in wanted}
    model.load_state_dict(state, strict=False)
    return model
