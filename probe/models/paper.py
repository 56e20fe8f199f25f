"""The paper's template-task transformer, built from transformers' GPT-2 (``build_model("paper")``).

The official code (eboix/relational-reasoning, ``experiments/models.py``,
``TemplateMatchingTransformer``; adapted from vit_pytorch) trains a pre-LN
encoder. This module builds the same network out of an unmodified
``GPT2ForSequenceClassification`` / ``GPT2LMHeadModel`` — no modeling code is
copied — by configuration and by changing weights after construction::

    model = build_model("paper", task=task, tokenizer=tok, n_layer=2, n_embd=128)

What matches the official model, and how:

- **bidirectional attention**: ``config.is_causal = False``, transformers'
  documented switch, makes ``masking_utils.create_causal_mask`` build the
  bidirectional (padding-only) mask through ``AttentionMaskInterface`` for every
  attention implementation; each ``GPT2Attention.is_causal`` is also set to
  ``False``, because the sdpa path reads that flag (not the config) when the
  mask is skipped for a batch without padding, and would silently be causal.
  ``tests/test_paper.py`` checks that a later token changes an earlier
  position's hidden state, under eager, sdpa and the injected ``probe_ab``.
- **pre-LN blocks, GELU MLP**: GPT-2's blocks are ``x + attn(ln_1(x))``,
  ``x + mlp(ln_2(x))`` with affine LayerNorms, as the official ``PreNorm``;
  ``activation_function="gelu"`` is the exact (erf) GELU of ``nn.GELU()``
  (GPT-2's default ``gelu_new`` is the tanh approximation). MLP width
  ``4 * n_embd`` (GPT-2's default; the official ``mlp_dim`` is an argument).
- **dropout 0** on embeddings, attention and residual.
- **N(0, 1) token and position embeddings** (``nn.Embedding`` / ``torch.randn``
  in the official code). The position table holds the longest template plus the
  readout token when a task is given (the official ``context_length + 1``).
- **no Q/K/V/output biases**: GPT-2's ``Conv1D`` always has a bias; the
  attention's ``c_attn`` and ``c_proj`` biases are set to zero and frozen
  (``requires_grad=False``), which computes exactly a bias-free projection. The
  MLP keeps its biases (the official ``nn.Linear`` layers have them).
- **weight init**: the official code keeps PyTorch's ``nn.Linear`` default,
  U(±1/√fan_in) for weights and biases; GPT-2 draws N(0, 0.02) (and
  N(0, 0.02/√(2·n_layer)) for output projections). Every ``Conv1D`` and the
  regression head are redrawn from PyTorch's rule.
- **readout**: probe appends a readout token to every row. Regression reads it
  (the last real position) after the final LayerNorm ``ln_f``, whose weight and
  bias are fixed at 1 and 0 (frozen): a LayerNorm without affine parameters, as
  the official ``mlp_head`` / ``final_ln``, then GPT-2's ``score`` Linear.
  Symbolic labels (the official ``pool="final"``) read the *input's own last
  token* through the same LayerNorm and GPT-2's LM head, tied to the token
  embedding (the official ``x @ to_embedding.weight.T``): the readout token is
  masked out of attention like padding, which computes exactly the official
  model on the row without it (``tests/models/test_paper.py`` checks this).
  ``readout="cls"`` reads the appended token instead (the official class's
  other ``pool``, and probe's GPT-2 default; kept as an ablation).
- **d_head 64**: ``n_head`` defaults to ``n_embd // 64``. The official
  ``Attention`` takes ``heads`` and ``dim_head`` (default 64) independently
  (inner width ``heads * dim_head`` need not equal ``dim``); the notebook that
  set ``heads`` for each figure is not in the repository's snapshot (its blob
  is missing), so the head count of the paper's runs could not be checked.

What differs (transformers' GPT-2 cannot express it without a fork):

- GPT-2 ties the attention's inner width to the model width
  (``d_head = n_embd / n_head``); a configuration with ``heads * 64 != n_embd``
  cannot be built.
- GPT-2's ``score`` head has no bias; the official ``nn.Linear(dim, classes)``
  has one. For the ±1 tasks with balanced templates the best constant is 0.
- The official regression readout token is a learned parameter
  (``cls_token``, N(0, 1)); here it is the ``<out>`` row of the token
  embedding, also N(0, 1) and trained — the same thing.

Saved models record ``config.probe_preset = "paper"``; ``build_model(folder)``
restores the non-causal flags and the frozen parameters. Load them through
probe (``build_model`` or ``probe.models.identity.load_injected``, which computes
attention eagerly): a bare ``from_pretrained`` under sdpa would leave each
attention module's ``is_causal`` at True.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probe.models.architectures import SMALL_SHAPE

PAPER = "paper"  # the build_model name
PRESET_KEY = "probe_preset"  # config attribute recording the preset of a saved model
D_HEAD = 64  # the official default dim_head
DEFAULT_SHAPE = {k: SMALL_SHAPE[k] for k in ("n_layer", "n_embd")}  # heads: d_head 64
INITS = ("torch", "gpt2")  # the ``init`` override: nn.Linear's default, or GPT-2's own
READOUT_KEY = "probe_readout"  # config attribute: where symbolic labels are read
# the ``readout`` override -> probe.models.build readout mode per label kind, named after
# the official TiedEmbeddingUnembedding's ``pool``: "final" (its default) reads the input's
# own last token, "cls" an appended token (probe's GPT-2 default, and what paper models
# saved before the option existed were trained with). Regression always reads the
# appended token (the official TemplateMatchingTransformer's cls_token).
READOUTS: dict[str, dict[str, str]] = {
    "final": {"regression": "last_token_score", "symbolic": "input_last_token_logits"},
    "cls": {"regression": "last_token_score", "symbolic": "last_token_logits"},
}

# GPT-2 config values of the official model (dropout 0, exact GELU).
PAPER_CONFIG: dict[str, Any] = {
    "activation_function": "gelu",
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}


def default_heads(n_embd: int) -> int:
    """``n_embd // 64`` heads (d_head 64); a clear error when the width is no multiple of 64."""
    if not isinstance(n_embd, int) or n_embd < 1:
        raise ValueError(f"n_embd={n_embd!r} must be a positive integer")
    if n_embd % D_HEAD:
        raise ValueError(
            f"n_embd={n_embd} is not a multiple of the paper's d_head {D_HEAD}, so the "
            f"default n_head = n_embd // {D_HEAD} does not apply; pass n_head= explicitly "
            f"(d_head = n_embd / n_head) or a width that is a multiple of {D_HEAD}"
        )
    return n_embd // D_HEAD


@dataclass(frozen=True)
class PaperSettings:
    """What ``build_model("paper", ...)`` builds: the GPT-2 config fields of the paper's
    network, and what is set on the built GPT-2 (:func:`finish_paper_model`)."""

    gpt2: dict[str, Any]  # GPT-2 config fields (shape, positions, dropout 0, ...)
    causal: bool  # is_causal (an ablation; the paper's is bidirectional)
    init: str  # "torch" (nn.Linear's default, the official code's) or "gpt2"
    readout: str  # where symbolic labels are read: "final" or "cls"


def paper_settings(task: Any = None, **overrides: Any) -> PaperSettings:
    """The paper model's settings for ``task`` (see the module docstring).

    ``overrides`` are GPT-2 config fields (``n_layer``, ``n_embd``, ``n_head``, ...);
    defaults: 2 layers, width 128, ``n_embd // 64`` heads. Two more keys exist for
    ablations (``--model-override KEY=VALUE``, or ``model_overrides:`` in a recipe):
    ``is_causal=true`` puts GPT-2's causal mask back (everything else unchanged),
    ``init="gpt2"`` keeps GPT-2's N(0, 0.02) initialization of the projections, and
    ``readout="cls"`` reads symbolic labels at the appended readout token instead of
    the input's own last token (``"final"``).
    """
    overrides = dict(overrides)
    causal = _flag("is_causal", overrides.pop("is_causal", False))
    init = overrides.pop("init", "torch")
    if init not in INITS:
        raise ValueError(
            f"init={init!r}; the paper model's init is one of {INITS}: 'torch' (nn.Linear's "
            "default, the official code's) or 'gpt2' (GPT-2's N(0, 0.02), for ablations)"
        )
    readout_at = overrides.pop("readout", "final")
    if readout_at not in READOUTS:
        raise ValueError(
            f"readout={readout_at!r}; the paper model reads symbolic labels at one of "
            f"{tuple(READOUTS)}: 'final' (the input's own last token, the official "
            "default) or 'cls' (an appended readout token, probe's GPT-2 default)"
        )
    values = {**DEFAULT_SHAPE, **PAPER_CONFIG}
    templates = getattr(task, "templates", None)
    if templates:  # the longest rendered row: a template, then the readout token
        values["n_positions"] = max(len(t.tokens) for t in templates) + 1
    values.update(overrides)
    if values.get("n_head") is None:
        values["n_head"] = default_heads(values["n_embd"])
    n_embd, n_head = values["n_embd"], values["n_head"]
    if not isinstance(n_head, int) or n_head < 1 or n_embd % n_head:
        raise ValueError(
            f"n_head={n_head!r} must be a positive integer dividing n_embd={n_embd} "
            f"(GPT-2's d_head is n_embd / n_head; the paper's is {D_HEAD})"
        )
    return PaperSettings(gpt2=values, causal=causal, init=init, readout=readout_at)


def finish_paper_model(model: nn.Module, settings: PaperSettings) -> nn.Module:
    """A fresh GPT-2 built from ``settings.gpt2`` made the paper's network in place: its
    projections drawn as the official code draws them (``init="torch"``; under the
    caller's seed), the settings recorded in its config, the constraints applied."""
    if settings.init == "torch":
        torch_default_init(model)
    model.config.is_causal = settings.causal
    model.config.probe_init = settings.init
    setattr(model.config, READOUT_KEY, settings.readout)
    setattr(model.config, PRESET_KEY, PAPER)
    apply_constraints(model)
    return model


def _flag(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"{name}={value!r}; pass true or false")


def is_paper_model(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), PRESET_KEY, None) == PAPER


def readouts(model: nn.Module) -> dict[str, str]:
    """Label kind -> readout mode of a paper model (``READOUTS``; "cls" when unrecorded)."""
    return READOUTS[getattr(model.config, READOUT_KEY, "cls")]


def apply_constraints(model: nn.Module) -> nn.Module:
    """Make a GPT-2 the paper's network in place: bidirectional attention, attention
    biases zero and frozen, the final LayerNorm fixed at weight 1, bias 0 (non-affine).

    Idempotent; ``build_model`` calls it again on a saved paper model after loading.
    """
    from probe.models.architectures import attention_sites

    causal = bool(getattr(model.config, "is_causal", False))  # False unless an ablation
    model.config.is_causal = causal
    for site in attention_sites(model, include_cross=False):
        site.attention.is_causal = causal  # the sdpa path reads the module's flag
        for projection in (site.attention.c_attn, site.output_projection):
            _freeze(getattr(projection, "base_layer", projection).bias, 0.0)
    ln_f = _transformer(model).ln_f
    _freeze(ln_f.weight, 1.0)
    _freeze(ln_f.bias, 0.0)
    return model


def _transformer(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if type(module).__name__ == "GPT2Model":
            return module
    raise TypeError(f"{type(model).__name__} holds no GPT2Model; the paper preset is a GPT-2")


def _freeze(param: torch.Tensor | None, value: float) -> None:
    if param is None:
        return
    with torch.no_grad():
        param.fill_(value)
    param.requires_grad_(False)


def torch_default_init(model: nn.Module) -> None:
    """Redraw GPT-2's projections as ``nn.Linear`` initializes itself: U(±1/√fan_in)
    for weights and biases (the official model keeps PyTorch's defaults)."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if type(module).__name__ == "Conv1D":  # weight [in, out]
                bound = 1.0 / math.sqrt(module.weight.shape[0])
            elif isinstance(module, nn.Linear) and name.split(".")[-1] == "score":
                bound = 1.0 / math.sqrt(module.weight.shape[1])  # [out, in]
            else:
                continue
            module.weight.uniform_(-bound, bound)
            if module.bias is not None:
                module.bias.uniform_(-bound, bound)
