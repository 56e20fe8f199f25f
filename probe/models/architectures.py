"""One table of per-architecture facts: where the attention heads are and what they hold.

Every module that needs to know something about GPT-2, T5, Llama-family or BERT
asks this table (``ARCHITECTURES``) instead of branching on the model type.
``attention_sites(model)`` lists every attention layer of a model with its
head counts and output projection; ``head_weights(site)`` returns the
per-head projection matrices in the ``x @ W`` convention::

    W_Q: [n_heads,    d_model, d_head]
    W_K: [n_kv_heads, d_model, d_head]
    W_V: [n_kv_heads, d_model, d_head]
    W_O: [n_heads,    d_head,  d_model]

so that head h's logits are ``(X W_Q[h]) (X W_K[g])ᵀ · scaling`` with
``g = h // (n_heads // n_kv_heads)`` (grouped-query attention), and its output
is ``A_h X W_V[g] W_O[h]``. Biases are left out: they do not enter the
bilinear forms W_Q W_Kᵀ and W_V W_O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch waits for a model: `probe finetune --help` reads SMALL_SHAPE
    import torch
    from torch import nn

Matrices = "tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]"

# The paper's small transformer at CPU scale, the from-scratch shape runs default to, in
# GPT-2's names; ArchSpec.shape turns it into each architecture's config fields
SMALL_SHAPE = {"n_layer": 2, "n_embd": 128, "n_head": 4}


@dataclass(frozen=True)
class ArchSpec:
    """What probe needs to know about one transformers architecture."""

    model_type: str
    family: str  # "causal" (decoder-only), "seq2seq" (encoder-decoder) or "encoder"
    attention_classes: tuple[str, ...]  # class names of the modules computing attention
    # (attention module, its parent) -> output projection applied to the heads' concatenation
    output_projection: Callable[[nn.Module, nn.Module], nn.Module]
    # (attention module, output projection) -> W_Q, W_K, W_V, W_O as flat [d_model, H*d_head] / [H*d_head, d_model]
    flat_weights: Callable[[nn.Module, nn.Module], Matrices]
    d_model_key: str  # config attribute holding the model width
    n_layers_key: str  # config attribute holding the number of layers (per stack)
    n_heads_key: str  # config attribute holding the number of query heads
    qk_scaled: bool  # True: logits carry 1/sqrt(d_head); False: T5 folds it into W_Q
    # label kind ("regression" / "symbolic") -> the transformers Auto class building that head
    heads: dict[str, str] = field(default_factory=dict, hash=False)
    # label kind -> how probe.models.build.readout reads the answer (the modes are defined there)
    readouts: dict[str, str] = field(default_factory=dict, hash=False)
    # module-name suffixes of learned absolute position embeddings (none: RoPE / relative bias)
    position_embeddings: tuple[str, ...] = ()
    # config attribute naming the token a "pooled" classifier pools at; build_model points it
    # at the readout token (T5's classifier pools the decoder state at each row's eos)
    pooled_token_key: str = ""
    # (model, attention module path) -> (norm whose output feeds the queries, norm whose
    # output feeds the keys and values); None where the input is not a norm's output
    input_norms: Callable[[nn.Module, str], tuple[nn.Module | None, nn.Module | None]] | None = None
    # (layers, width, heads) -> the from-scratch shape in this architecture's config names;
    # feed-forward width 4x the model width everywhere (GPT-2's own default), so one shape
    # means the same model family-wide
    shape: Callable[[int, int, int], dict[str, int]] | None = None
    # module name of the regression head a checkpoint gets on top (trained in full under LoRA)
    regression_head: str = "score"
    # the transformers Auto class of the bare architecture with its usual head, for analysis
    # of any checkpoint (probe diagonal)
    analysis_class: str = "AutoModelForCausalLM"
    # rotary position embeddings (RoPE) act on Q and K: inject_ab(kq="rotated") applies
    rotary: bool = False


def _linear(weight_module: nn.Module) -> torch.Tensor:
    """nn.Linear stores [out, in]; the table speaks ``x @ W``, i.e. [in, out]."""
    return weight_module.weight.T


def _gpt2_weights(attn: nn.Module, out: nn.Module) -> Matrices:
    # Conv1D stores [in, out] already; c_attn is Q, K and V side by side, except in
    # cross-attention, where c_attn holds K and V and Q has its own q_attn.
    w = attn.c_attn.weight
    d = w.shape[0]
    if getattr(attn, "is_cross_attention", False):
        return attn.q_attn.weight, w[:, :d], w[:, d:], out.weight
    return w[:, :d], w[:, d : 2 * d], w[:, 2 * d :], out.weight


def _t5_weights(attn: nn.Module, out: nn.Module) -> Matrices:
    return _linear(attn.q), _linear(attn.k), _linear(attn.v), _linear(out)


def _llama_weights(attn: nn.Module, out: nn.Module) -> Matrices:
    return _linear(attn.q_proj), _linear(attn.k_proj), _linear(attn.v_proj), _linear(out)


def _bert_weights(attn: nn.Module, out: nn.Module) -> Matrices:
    return _linear(attn.query), _linear(attn.key), _linear(attn.value), _linear(out)


def _sibling(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path)
    except AttributeError:
        return None


def _parent_path(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _gpt2_norms(model: nn.Module, name: str) -> tuple[nn.Module | None, nn.Module | None]:
    block = _parent_path(name)  # transformer.h.{i}; cross-attention keys come from outside
    if name.endswith("crossattention"):
        return _sibling(model, f"{block}.ln_cross_attn"), None
    return (_sibling(model, f"{block}.ln_1"),) * 2


def _t5_norms(model: nn.Module, name: str) -> tuple[nn.Module | None, nn.Module | None]:
    # {stack}.block.{i}.layer.{j}.SelfAttention / EncDecAttention; the norm is the sublayer's
    norm = _sibling(model, f"{_parent_path(name)}.layer_norm")
    if name.endswith("EncDecAttention"):  # keys and values read the encoder's output
        prefix = name.split("decoder.block.")[0]
        return norm, _sibling(model, f"{prefix}encoder.final_layer_norm")
    return norm, norm


def _llama_norms(model: nn.Module, name: str) -> tuple[nn.Module | None, nn.Module | None]:
    return (_sibling(model, f"{_parent_path(name)}.input_layernorm"),) * 2


def _bert_norms(model: nn.Module, name: str) -> tuple[nn.Module | None, nn.Module | None]:
    # post-LN: layer i reads the previous layer's output norm (the embeddings' for i = 0)
    prefix, rest = name.split("encoder.layer.", 1)
    i = int(rest.split(".", 1)[0])
    path = (
        f"{prefix}embeddings.LayerNorm"
        if i == 0
        else f"{prefix}encoder.layer.{i - 1}.output.LayerNorm"
    )
    return (_sibling(model, path),) * 2


# decoder-only models: a one-output classifier for regression, the LM head for symbols,
# both read at the last real position (the readout token)
_CAUSAL_HEADS = {
    "regression": "AutoModelForSequenceClassification",
    "symbolic": "AutoModelForCausalLM",
}
_CAUSAL_READOUTS = {"regression": "last_token_score", "symbolic": "last_token_logits"}

ARCHITECTURES: dict[str, ArchSpec] = {
    "gpt2": ArchSpec(
        model_type="gpt2",
        family="causal",
        attention_classes=("GPT2Attention",),
        output_projection=lambda attn, parent: attn.c_proj,
        flat_weights=_gpt2_weights,
        d_model_key="n_embd",
        n_layers_key="n_layer",
        n_heads_key="n_head",
        qk_scaled=True,
        input_norms=_gpt2_norms,
        heads=_CAUSAL_HEADS,
        readouts=_CAUSAL_READOUTS,
        position_embeddings=("wpe",),
        shape=lambda n, d, h: {"n_layer": n, "n_embd": d, "n_head": h},
    ),
    # T5: relative position bias is added to the logits; no 1/sqrt(d) scaling
    "t5": ArchSpec(
        model_type="t5",
        family="seq2seq",
        attention_classes=("T5Attention",),
        output_projection=lambda attn, parent: attn.o,
        flat_weights=_t5_weights,
        d_model_key="d_model",
        n_layers_key="num_layers",
        n_heads_key="num_heads",
        qk_scaled=False,
        input_norms=_t5_norms,
        # the classifier pools the decoder state at the (single) eos token of each row
        heads={
            "regression": "AutoModelForSequenceClassification",
            "symbolic": "AutoModelForSeq2SeqLM",
        },
        readouts={"regression": "pooled", "symbolic": "decoder_step"},
        pooled_token_key="eos_token_id",
        # T5's per-head width = width / heads, as elsewhere
        shape=lambda n, d, h: {
            "num_layers": n,
            "d_model": d,
            "num_heads": h,
            "d_ff": 4 * d,
            "d_kv": d // h,
        },
        regression_head="classification_head",
        analysis_class="AutoModelForSeq2SeqLM",
    ),
    # RoPE rotates Q and K; W_Q W_Kᵀ is the content term at relative position 0
    "llama": ArchSpec(
        model_type="llama",
        family="causal",
        attention_classes=("LlamaAttention",),
        output_projection=lambda attn, parent: attn.o_proj,
        flat_weights=_llama_weights,
        d_model_key="hidden_size",
        n_layers_key="num_hidden_layers",
        n_heads_key="num_attention_heads",
        qk_scaled=True,
        input_norms=_llama_norms,
        heads=_CAUSAL_HEADS,
        readouts=_CAUSAL_READOUTS,
        shape=lambda n, d, h: {
            "num_hidden_layers": n,
            "hidden_size": d,
            "num_attention_heads": h,
            "num_key_value_heads": h,
            "intermediate_size": 4 * d,
        },
        rotary=True,
    ),
    "bert": ArchSpec(
        model_type="bert",
        family="encoder",
        attention_classes=("BertSelfAttention", "BertSdpaSelfAttention"),
        # BERT's output projection lives beside the attention: BertAttention.output.dense
        output_projection=lambda attn, parent: parent.output.dense,
        flat_weights=_bert_weights,
        d_model_key="hidden_size",
        n_layers_key="num_hidden_layers",
        n_heads_key="num_attention_heads",
        qk_scaled=True,
        input_norms=_bert_norms,
        # regression pools the first token ([CLS]); symbolic reads the masked-LM head at the
        # readout token, which plays the role of [MASK]
        heads={
            "regression": "AutoModelForSequenceClassification",
            "symbolic": "AutoModelForMaskedLM",
        },
        readouts={"regression": "pooled", "symbolic": "last_token_logits_full"},
        position_embeddings=("embeddings.position_embeddings",),
        shape=lambda n, d, h: {
            "num_hidden_layers": n,
            "hidden_size": d,
            "num_attention_heads": h,
            "intermediate_size": 4 * d,
        },
        regression_head="classifier",
        analysis_class="AutoModel",
    ),
}

# Model types that are the same architecture under another name.
ALIASES = {"smollm": "llama", "smollm2": "llama", "mistral": "llama"}


def supported() -> str:
    return ", ".join(sorted(ARCHITECTURES))


def arch_spec(model_or_config) -> ArchSpec:
    """The table row for a model or a config; a clear error for anything else."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    key = ALIASES.get(model_type, model_type)
    if key not in ARCHITECTURES:
        raise ValueError(
            f"unsupported architecture {model_type!r} ({type(model_or_config).__name__}); "
            f"probe supports: {supported()}. Add a row to probe.models.architectures.ARCHITECTURES "
            "to support another one."
        )
    return ARCHITECTURES[key]


@dataclass
class AttentionSite:
    """One attention layer of a model."""

    name: str  # module path, e.g. "transformer.h.0.attn"
    layer: int  # index within its stack
    kind: str  # "self" (decoder-only / encoder-only), "encoder", "decoder" or "cross"
    attention: nn.Module
    output_projection: nn.Module
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    scaling: float  # the factor on Q Kᵀ in the logits (1.0 for T5)
    spec: ArchSpec


_LAYER_INDEX = re.compile(r"\.(\d+)\.")


def _site_kind(name: str, attn: nn.Module, spec: ArchSpec) -> str:
    if (
        getattr(attn, "is_cross_attention", False)
        or "EncDecAttention" in name
        or "crossattention" in name
    ):
        return "cross"
    if spec.family == "seq2seq":
        return "decoder" if "decoder" in name else "encoder"
    return "self"


def attention_sites(model: nn.Module, include_cross: bool = True) -> list[AttentionSite]:
    """Every attention layer of ``model``, in module order.

    Works on the bare model, task heads (``...ForCausalLM``,
    ``...ForSequenceClassification``) and peft wrappers alike, since it walks
    the modules and matches the table's attention class names.
    """
    spec = arch_spec(model)
    config = model.config
    modules = dict(model.named_modules())
    sites = []
    for name, module in modules.items():
        if type(module).__name__ not in spec.attention_classes:
            continue
        parent = modules[name.rsplit(".", 1)[0]] if "." in name else model
        kind = _site_kind(name, module, spec)
        if kind == "cross" and not include_cross:
            continue
        found = _LAYER_INDEX.findall(f".{name}.")
        n_heads = getattr(config, spec.n_heads_key)
        n_kv_heads = getattr(config, "num_key_value_heads", None) or n_heads
        d_model = getattr(config, spec.d_model_key)
        d_head = (
            getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or d_model // n_heads
        )
        sites.append(
            AttentionSite(
                name=name,
                layer=int(found[0]) if found else 0,  # the stack index, not a sub-layer
                kind=kind,
                attention=module,
                output_projection=spec.output_projection(module, parent),
                n_heads=n_heads,
                n_kv_heads=n_kv_heads,
                d_head=d_head,
                d_model=d_model,
                scaling=float(getattr(module, "scaling", 1.0)) if spec.qk_scaled else 1.0,
                spec=spec,
            )
        )
    if not sites:
        raise ValueError(
            f"found no attention module of class {spec.attention_classes} in "
            f"{type(model).__name__}; is this a {spec.model_type} model?"
        )
    return sites


def head_weights(site: AttentionSite) -> Matrices:
    """Per-head W_Q, W_K, W_V, W_O of one attention layer (see the module docstring).

    Returns detached tensors; peft LoRA layers are read through their base layer
    (the adapters are not merged in).
    """

    def base(m: nn.Module) -> nn.Module:
        return getattr(m, "base_layer", m)

    attn = site.attention
    proxy = _BaseLayerView(attn) if any(hasattr(c, "base_layer") for c in attn.children()) else attn
    w_q, w_k, w_v, w_o = site.spec.flat_weights(proxy, base(site.output_projection))
    h, g, dh, d = site.n_heads, site.n_kv_heads, site.d_head, w_q.shape[0]
    return (
        w_q.detach().reshape(d, h, dh).permute(1, 0, 2),
        w_k.detach().reshape(d, g, dh).permute(1, 0, 2),
        w_v.detach().reshape(d, g, dh).permute(1, 0, 2),
        w_o.detach().reshape(h, dh, w_o.shape[-1]),
    )


class _BaseLayerView:
    """Attribute view of an attention module that sees through peft's LoRA wrappers."""

    def __init__(self, module: nn.Module):
        self._module = module

    def __getattr__(self, name: str):
        value = getattr(self._module, name)
        return getattr(value, "base_layer", value)
