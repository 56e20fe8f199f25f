"""The fully-connected baselines: an MLP on the concatenated token embeddings, and one that also sees X Xᵀ.

The paper proves that a fully-connected network on the concatenated embeddings
cannot generalize to unseen symbols: nothing in its input says which positions
hold the *same* symbol. The equality pattern is in the Gram matrix X Xᵀ of the
token embeddings, which attention computes and which ``xxt=True`` hands to the
MLP directly as extra features.

Both are small ``PreTrainedModel``s with their own config (``model_type
"probe_mlp"``), so they save and load like any transformers checkpoint, and
they share the forward contract of probe's transformer heads::

    forward(input_ids [batch, seq], attention_mask [batch, seq], labels [batch])
        -> SequenceClassifierOutput(loss, logits [batch, n_out])

``n_out`` is 1 for regression (loss: MSE against the float label) and the
vocabulary size for symbolic labels (loss: cross-entropy against the answer's
token id). Build them with ``probe.build_model("mlp", ...)`` or
``probe.build_model("mlp_xxt", ...)``.

The official code's baselines are ``mlp_onehot`` (one-hot symbols, concatenated:
a symbol never seen in training reaches first-layer weights that no gradient
moved, which is the paper's theorem's setting) and ``mlp_onehot_xxt`` (plus the
exact token-equality indicators 1[x_i = x_j]). Differences from the official
ones: probe's rows end in the readout token (a constant input, so a constant
feature), and ``n_layer`` counts hidden layers (the official ``num_layers``
counts linear layers, the output layer included: its 2 is probe's 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import SequenceClassifierOutput

from probe.tasks.templates import LABEL_KINDS

# build_model name -> whether the MLP also sees the X Xᵀ equality features
MLP_VARIANTS: dict[str, bool] = {
    "mlp": False,
    "mlp_xxt": True,
    "mlp_onehot": False,
    "mlp_onehot_xxt": True,
}
# build_model name -> further SymbolMLPConfig values: the official code's baselines
# (eboix/relational-reasoning, experiments/models.py: TemplateMatchingMLP and
# TemplateMatchingMLPWithXXT) read one-hot symbols and exact equality indicators
OFFICIAL_MLPS: dict[str, dict[str, bool]] = {
    "mlp_onehot": {"onehot": True},
    "mlp_onehot_xxt": {"onehot": True, "xxt_exact": True},
}


def variant_config(name: str) -> dict[str, bool]:
    """The SymbolMLPConfig values a baseline name stands for."""
    return {"xxt": MLP_VARIANTS[name], **OFFICIAL_MLPS.get(name, {})}


class SymbolMLPConfig(PreTrainedConfig):
    """Configuration of :class:`SymbolMLP`.

    ``max_length`` fixes the input width (rows are zero-padded up to it);
    ``n_layer`` hidden layers of width ``d_hidden`` with ReLU sit between the
    features and the output layer.
    """

    model_type = "probe_mlp"

    vocab_size: int = 64
    max_length: int = 16
    d_embed: int = 64
    d_hidden: int = 256
    n_layer: int = 2
    xxt: bool = False
    onehot: bool = False  # one-hot symbols instead of learned embeddings (the official MLP)
    xxt_exact: bool = False  # X Xᵀ as exact token-equality indicators (the official MLP + XXᵀ)
    label_kind: str = "regression"
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        if self.label_kind not in LABEL_KINDS:
            raise ValueError(
                f"label_kind={self.label_kind!r}; expected one of {LABEL_KINDS} "
                "(the task's label_kind)"
            )
        for name in ("vocab_size", "max_length", "d_embed", "d_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1")
        if self.n_layer < 0:
            raise ValueError(f"n_layer={self.n_layer} must be 0 (a linear model) or more")
        super().__post_init__(**kwargs)

    @property
    def n_out(self) -> int:
        """Outputs per sample: one scalar (regression) or a logit per vocabulary token."""
        return 1 if self.label_kind == "regression" else self.vocab_size

    @property
    def n_features(self) -> int:
        """Width of the MLP's input: the flattened embeddings (one-hot rows with ``onehot``),
        plus X Xᵀ when ``xxt``."""
        width = self.vocab_size if self.onehot else self.d_embed
        return self.max_length * width + (self.max_length**2 if self.xxt else 0)


class SymbolMLP(PreTrainedModel):
    """MLP on the concatenated token embeddings (and, if ``config.xxt``, their Gram matrix).

    Position ``i`` of the input occupies its own slice of the feature vector, so
    the network has no built-in notion of "the same symbol at two positions";
    the X Xᵀ features (divided by ``d_embed``, so an equal pair reads ≈ 1 at
    unit-scale init and an unequal pair ≈ 0) supply exactly that.
    """

    config_class = SymbolMLPConfig
    base_model_prefix = "mlp"
    main_input_name = "input_ids"

    def __init__(self, config: SymbolMLPConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_embed)
        layers: list[nn.Module] = []
        width = config.n_features
        for _ in range(config.n_layer):
            layers += [nn.Linear(width, config.d_hidden), nn.ReLU()]
            width = config.d_hidden
        self.hidden = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.n_out)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # Unit-scale embeddings, as for the transformers built from scratch; linear layers
        # keep PyTorch's fan-in scaling, so a unit-scale input gives unit-scale activations.
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, mean=0.0, std=1.0)
        elif isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            bound = 1 / module.in_features**0.5
            init.uniform_(module.bias, -bound, bound)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed = value

    def features(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The MLP's input: [batch, max_length * d_embed (+ max_length ** 2 with xxt)]."""
        cfg = self.config
        batch, seq = input_ids.shape
        if seq > cfg.max_length:
            raise ValueError(
                f"input has {seq} positions but this MLP reads at most max_length="
                f"{cfg.max_length}; build it with a larger max_length"
            )
        if attention_mask is None and cfg.pad_token_id is not None:
            attention_mask = input_ids != cfg.pad_token_id
        if cfg.onehot:  # unseen symbols hit first-layer weights no training sample moved
            x = F.one_hot(input_ids.long(), cfg.vocab_size).to(self.head.weight.dtype)
        else:
            x = self.embed(input_ids)  # [batch, seq, d_embed]
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)  # padding embeds to zero
        x = F.pad(x, (0, 0, 0, cfg.max_length - seq))  # [batch, max_length, d_embed]
        parts = [x.flatten(1)]
        if cfg.xxt and cfg.xxt_exact:  # 1 where two real positions hold the same token
            equal = (input_ids[:, :, None] == input_ids[:, None, :]).to(x.dtype)
            if attention_mask is not None:
                real = attention_mask.to(x.dtype)
                equal = equal * real[:, :, None] * real[:, None, :]
            pad = cfg.max_length - seq
            parts.append(F.pad(equal, (0, pad, 0, pad)).flatten(1))
        elif cfg.xxt:
            gram = x @ x.transpose(1, 2) / cfg.d_embed  # [batch, max_length, max_length]
            parts.append(gram.flatten(1))
        return torch.cat(parts, dim=1)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """``logits``: [batch, n_out]; ``loss`` when ``labels`` ([batch]) is given."""
        logits = self.head(self.hidden(self.features(input_ids, attention_mask)))
        loss = None
        if labels is not None:
            if self.config.label_kind == "regression":
                loss = F.mse_loss(logits[:, 0], labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(SymbolMLPConfig.model_type, SymbolMLPConfig, exist_ok=True)
AutoModel.register(SymbolMLPConfig, SymbolMLP, exist_ok=True)


def mlp_shape(n_layer: int | None, n_embd: int | None) -> dict[str, int]:
    """A run's ``--n-layer`` / ``--n-embd`` in the MLP's config names (hidden layers,
    embedding width); what is not given keeps the MLP's own default."""
    given = {"n_layer": n_layer, "d_embed": n_embd}
    return {k: v for k, v in given.items() if v is not None}
