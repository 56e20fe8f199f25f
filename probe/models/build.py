"""Build the models probe trains, and read their answer at the readout position.

``build_model`` turns a name into a Hugging Face model with the head a task
needs; ``readout`` returns that head's output for a batch::

    model = build_model("gpt2", task=task, tokenizer=tok, pretrained=False, n_layer=2)
    logits = readout(model, input_ids, attention_mask)   # [batch, n_out]

``n_out`` is 1 for regression labels and the vocabulary size for symbolic
labels. What each architecture uses for each label kind (which Auto class,
how the answer is read) is in ``probe.models.architectures.ARCHITECTURES``.

Names ``build_model`` accepts:

- a Hub id (``gpt2``, ``gpt2-medium``, ``t5-small``, ``HuggingFaceTB/SmolLM2-135M``)
  or a local folder saved with ``save_pretrained``;
- a GGUF file: a path ending in ``.gguf``, or ``gguf_file=`` beside a folder or Hub id;
- an architecture name (``gpt2``, ``t5``, ``llama``, ``bert``, or an alias such
  as ``smollm2``) with ``pretrained=False``: built from the architecture's
  default config class (``GPT2Config()``, ``T5Config()``, ...) and the
  overrides, without asking the Hub, so small models build offline (and the
  same online). ``GPT2Config()`` is the ``gpt2`` checkpoint's configuration;
  a default config above 1B parameters (``LlamaConfig()`` is 7B) gives way to the
  small shape (``SMALL_SHAPE``: 2 layers, width 128, 4 heads), with a log line;
  from scratch, more than 1B parameters needs ``allow_large=True``;
- a from-scratch preset (``SCRATCH_PRESETS``; ``small-gpt2`` is the paper's
  small transformer), an MLP baseline (``mlp``, ``mlp_xxt``, and the official
  code's ``mlp_onehot``, ``mlp_onehot_xxt``; see ``probe.models.mlp``), or ``paper``:
  the official code's template-task transformer (bidirectional, dropout 0, no
  attention biases, d_head 64), built from GPT-2 (``probe.models.paper``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import transformers
from torch import nn
from transformers import PreTrainedConfig

from probe.checks import did_you_mean
from probe.data.tokenizer import SymbolTokenizer, pad_token_id, readout_token_id
from probe.models import paper
from probe.models.architectures import ARCHITECTURES, SMALL_SHAPE, ArchSpec, arch_spec
from probe.models.mlp import LABEL_KINDS, SymbolMLP, SymbolMLPConfig, variant_config
from probe.models.positions import (
    add_absolute_positions,
    positions_for,
    restore_absolute_positions,
)
from probe.models.resolve import ModelRef, resolve_model

logger = logging.getLogger(__name__)

# Defaults of the MLP baselines; any SymbolMLPConfig field can be overridden. With a task,
# max_length defaults to its longest template plus the readout token.
MLP_DEFAULTS: dict[str, Any] = {"d_embed": 64, "d_hidden": 256, "n_layer": 2, "max_length": 16}

# A config field derived from others when left unset; if it still holds its derived value
# when an override changes a source, it is derived again rather than left stale.
_DERIVED_FIELDS: dict[str, tuple[str, ...]] = {
    "head_dim": ("hidden_size", "num_attention_heads"),
    "num_key_value_heads": ("num_attention_heads",),
    "num_decoder_layers": ("num_layers",),
}


def build_model(
    name_or_path: str | os.PathLike,
    task: Any = None,
    tokenizer: Any = None,
    pretrained: bool = True,
    gguf_file: str | None = None,
    *,
    label_kind: str | None = None,
    attn_implementation: str | None = None,
    seed: int | None = None,
    allow_large: bool = False,
    **config_overrides: Any,
) -> nn.Module:
    """A Hugging Face model (or MLP baseline) with the head ``task``'s labels need.

    Args:
        name_or_path: Hub id, local folder, ``.gguf`` file, architecture name,
            preset (``SCRATCH_PRESETS``) or MLP baseline (``mlp``, ``mlp_xxt``);
            :func:`build_from_ref` builds a name already resolved.
        task: a ``TemplateTask``; only its ``label_kind`` is read.
        tokenizer: from scratch, the vocabulary is ``len(tokenizer)`` and the
            bos/eos ids are the tokenizer's; the pad id is the one rendered rows
            pad with (``probe.data.tokenizer.pad_token_id``: the readout id for GPT-2).
            Pretrained, a ``SymbolTokenizer`` whose size differs from the
            checkpoint's vocabulary (or any tokenizer larger than it) resizes the
            token embeddings (logged as a warning).
        pretrained: load the checkpoint's weights; ``False`` builds the same
            architecture from its config with fresh weights, token and position
            embeddings drawn from N(0, 1) (the paper's scale; GPT-2's own 0.02
            keeps unseen symbols from generalizing). Whether input and output
            embeddings are tied stays the architecture's default (GPT-2, T5 and
            BERT tie, Llama does not); override ``tie_word_embeddings`` to change it.
            Presets and MLPs have no checkpoint and are always fresh.
        gguf_file: a GGUF file name inside the folder or Hub repo ``name_or_path``.
        label_kind: ``"regression"`` or ``"symbolic"`` when no task is given;
            otherwise the checkpoint's recorded kind, else ``"symbolic"`` (the
            language-model head).
        attn_implementation: passed through to transformers (default: its own).
        seed: if given, the fresh weights are drawn under ``torch.manual_seed(seed)``
            without disturbing the global generator.
        allow_large: from scratch, a model above ``LARGE_PARAMS`` (1B) parameters is
            refused before any memory is allocated unless this is True.
        **config_overrides: config fields (``n_layer``, ``n_embd``, ``hidden_size``, ...),
            and for RoPE models ``absolute_positions=True`` (or a length): learned absolute
            position embeddings added to the input, as GPT-2 has (``probe.models.positions``).

    Returns:
        the model, with ``model.probe_label_kind`` (also stored in its config).
        Regression: a sequence classifier with one output
        (``problem_type="regression"``). Symbolic: a causal LM, T5 as
        seq2seq LM, BERT as masked LM read at the readout token.
    """
    return build_from_ref(
        resolve_model(name_or_path, gguf_file, pretrained),
        task,
        tokenizer,
        label_kind=label_kind,
        attn_implementation=attn_implementation,
        seed=seed,
        allow_large=allow_large,
        **config_overrides,
    )


def build_from_ref(
    ref: ModelRef,
    task: Any = None,
    tokenizer: Any = None,
    *,
    label_kind: str | None = None,
    attn_implementation: str | None = None,
    seed: int | None = None,
    allow_large: bool = False,
    **config_overrides: Any,
) -> nn.Module:
    """:func:`build_model` of a name :func:`~probe.models.resolve.resolve_model` already
    resolved (a run's plan holds its ``ModelRef``): the name is not resolved again."""
    kind = _requested_label_kind(task, label_kind)
    if ref.kind == "mlp":
        return _build_mlp(ref.source, kind or "symbolic", task, tokenizer, seed, config_overrides)
    if ref.kind == paper.PAPER:  # the official model, from GPT-2 (probe.models.paper)
        settings = paper.paper_settings(task, **config_overrides)
        with seeded(seed):
            model = build_model(
                "gpt2",
                task=task,
                tokenizer=tokenizer,
                pretrained=False,
                label_kind=kind,
                attn_implementation=attn_implementation,
                **settings.gpt2,
            )
            return paper.finish_paper_model(model, settings)
    config_overrides = {**ref.overrides, **config_overrides}
    pretrained = ref.pretrained
    config = ref.load_config()
    kind = kind or _checkpoint_label_kind(config)

    if config.model_type == SymbolMLPConfig.model_type:  # a saved MLP baseline
        return _load_mlp(ref.source, config, pretrained, kind, seed, config_overrides)

    spec = arch_spec(config)
    if kind not in spec.heads:
        raise ValueError(
            f"{spec.model_type} has no head for {kind!r} labels in probe.models.architectures "
            f"(it has: {sorted(spec.heads)})"
        )
    positions = config_overrides.pop("absolute_positions", None)  # probe.models.positions
    if positions is not None:
        positions = _absolute_positions(ref.name, spec, task, positions)
    _check_overrides(config, config_overrides)
    if not pretrained:
        config_overrides = _default_shape(ref.name, config, spec, config_overrides)
    vocabulary = _vocabulary(config, tokenizer, config_overrides) if not pretrained else {}
    config = _with_overrides(config, {**vocabulary, **config_overrides})
    _set_head(config, spec, kind, tokenizer)

    auto_class = getattr(transformers, spec.heads[kind])
    if not pretrained and not allow_large:
        _refuse_large(ref.name, auto_class, config)
    load_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with seeded(seed):
        if pretrained:
            if ref.gguf_file:
                load_kwargs["gguf_file"] = ref.gguf_file
            model = auto_class.from_pretrained(ref.source, config=config, **load_kwargs)
        else:
            model = auto_class.from_config(config, **load_kwargs)
            unit_scale_embeddings(model, spec)
        if pretrained:  # a saved model built with absolute positions gets its table back
            restore_absolute_positions(model, ref.source)
        if positions is not None:
            add_absolute_positions(model, positions)
    if pretrained and tokenizer is not None:
        _match_tokenizer(model, tokenizer)
    if pretrained and paper.is_paper_model(model):  # a saved paper model: non-causal, frozen
        paper.apply_constraints(model)
    return _record_label_kind(model, kind)


def readout(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """The model's answer at the readout position: [batch, n_out].

    ``input_ids``, ``attention_mask``: [batch, seq], padded on the right (the
    last real token is the readout token). Regression gives [batch, 1], symbolic
    the next-token logits [batch, vocab]. Causal LMs run their LM head at the
    readout position only (``logits_to_keep``); causal classifiers apply their
    score head to the final hidden state there (not at "the last token that is
    not padding", which fails when the readout token is the pad token, as with
    GPT-2's eos); seq2seq models run one decoder step from the decoder start
    token; BERT and T5 classifiers return their own pooled output; MLPs their
    output. A peft wrapper is called as is; its base model says what kind it is.
    So is a ``DistributedDataParallel`` wrapper (accelerate's, under several
    processes): calling it runs its gradient synchronization.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    base = _unwrapped(model)
    if isinstance(base, SymbolMLP):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    mode = readout_mode(base)
    mask, at = mode.where(attention_mask)
    return mode.read(model, base, input_ids, mask, at)


def readout_where(model: nn.Module, attention_mask: torch.Tensor) -> tuple | None:
    """The checked half of :func:`readout` for a whole split at once: ``(mask, positions)``,
    the mask the model sees and the position read in each row (``[n, seq]``, ``[n]``).
    It works row by row, so a batch's rows of it are what :func:`readout` works out for
    that batch: a training loop checks its split once here, then each step calls
    :func:`read_at` with its rows. None where there is nothing to work out once (the MLP
    baselines, and modes that read no position: the model's own pooling)."""
    base = _unwrapped(model)
    if isinstance(base, SymbolMLP):
        return None
    mask, at = readout_mode(base).where(attention_mask)
    return None if at is None else (mask, at)


def read_at(
    model: nn.Module, input_ids: torch.Tensor, mask: torch.Tensor, at: torch.Tensor
) -> torch.Tensor:
    """:func:`readout`'s answer from a batch's rows of :func:`readout_where`: pure tensor
    work, no check of the mask (so it compiles as one graph)."""
    base = _unwrapped(model)
    return readout_mode(base).read(model, base, input_ids, mask, at)


FIT_ADVICE = (
    "use the data the model's run was trained on: `probe attention --model RUN` (the run "
    "folder, without --dataset), `probe data render --from-run RUN --out DIR`, or "
    "`probe.run_folder_dataset(RUN)`"
)


def check_ids_fit(model: nn.Module, dataset: Any, advice: str = FIT_ADVICE) -> None:
    """Raise a one-line ``ValueError`` when a dataset's token ids (``input_ids`` of a
    ``Dataset``, or of every split of a ``DatasetDict``) reach past the model's input
    embedding, naming the largest id, the model's size and ``advice``. Every function
    that runs a model on a dataset checks here first: past the embedding, torch says only
    ``IndexError: index out of range in self``. A SymbolTokenizer's vocabulary grows
    with ``n_train + n_val + n_test``, so the same task rendered at other sizes (``probe
    data render`` defaults to ``--n-val 1000``, a run to 256) does not fit its model."""
    import pyarrow.compute as pc

    try:
        embedding = _unwrapped(model).get_input_embeddings()
    except (AttributeError, NotImplementedError):
        return
    rows = getattr(embedding, "num_embeddings", None)
    if rows is None:  # no token embedding to overrun
        return
    splits = dataset.items() if hasattr(dataset, "keys") else [(None, dataset)]
    for split, ds in splits:
        if ds.num_rows == 0:
            continue
        if ds._indices is not None:  # a selection: its own rows only
            ds = ds.flatten_indices()
        largest = pc.max(pc.list_flatten(ds.data.column("input_ids"))).as_py()
        if largest is not None and largest >= rows:
            where = f" (split {split!r})" if split else ""
            raise ValueError(
                f"the dataset's token ids reach {largest}{where} but the model embeds "
                f"{rows} ids (0..{rows - 1}): the data was rendered with another tokenizer "
                f"or other sizes than the model's; {advice}"
            )


def label_kind_of(model: nn.Module) -> str:
    """``"regression"`` or ``"symbolic"``: what ``build_model`` recorded, else the head's class."""
    kind = getattr(model, "probe_label_kind", None) or getattr(
        model.config, "probe_label_kind", None
    )
    if kind is None:
        name = type(model).__name__
        kind = "regression" if name.endswith("ForSequenceClassification") else "symbolic"
    return kind


def fresh_weights(model: nn.Module, seed: int | None = None) -> nn.Module:
    """The same architecture as ``model`` with fresh weights, drawn as
    ``build_model(..., pretrained=False, seed=seed)`` draws them: ``from_config`` under
    the seed, token and position embeddings from N(0, 1); a ``paper`` model gets its
    init and constraints, a model with absolute positions (``probe.models.positions``)
    its table. The random-weight control of ``probe.linear_probe``."""
    import copy

    base = _unwrapped(model)
    config = copy.deepcopy(base.config)
    positions = getattr(config, "probe_absolute_positions", None)
    if positions is not None:
        del config.probe_absolute_positions
    with seeded(seed):
        twin = type(base)._from_config(config)
        unit_scale_embeddings(twin, arch_spec(twin.config))
        if paper.is_paper_model(base) and getattr(config, "probe_init", "torch") == "torch":
            paper.torch_default_init(twin)
        if positions is not None:
            add_absolute_positions(twin, positions)
    if paper.is_paper_model(twin):
        paper.apply_constraints(twin)
    twin.to(next(base.parameters()).device)
    kind = getattr(base, "probe_label_kind", None)
    return _record_label_kind(twin, kind) if kind else twin


def unit_scale_embeddings(model: nn.Module, spec: ArchSpec) -> None:
    """Redraw token and learned position embeddings from N(0, 1), in place.

    The padding row (BERT's ``padding_idx``) stays zero. Tied output embeddings
    share the token embedding's weight and so change with it.
    """
    with torch.no_grad():
        token = model.get_input_embeddings()
        tables = [token] + [
            module
            for name, module in model.named_modules()
            if isinstance(module, nn.Embedding)
            and any(name == s or name.endswith("." + s) for s in spec.position_embeddings)
        ]
        for table in tables:
            table.weight.normal_(0.0, 1.0)
            if table.padding_idx is not None:
                table.weight[table.padding_idx].zero_()


# --- readout modes (named in ArchSpec.readouts) --------------------------------------------
#
# Each mode is two steps: ``where`` reads the padding (checked, data-dependent: it runs
# eagerly, outside any torch.func transform) and gives the mask the model sees and the
# positions the answer is read at; ``read`` is pure tensor work on those (it also runs
# under ``vmap``, where probe.train.pack hands the model a 4-D additive mask instead of
# the 2-D one: :func:`additive_mask`).


def _last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token: [batch]; checks the padding is on the right."""
    lengths = attention_mask.long().sum(dim=1)  # bool and float masks alike
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), positions < lengths[:, None]) or (lengths == 0).any():
        raise ValueError(
            "readout expects right padding: each attention_mask row is ones then zeros, "
            "with at least one one; pad on the right (tokenizer.padding_side = 'right')"
        )
    return lengths - 1


def _at_last(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    return attention_mask, _last_positions(attention_mask)


def _at_input_last(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The paper model's symbolic readout: the input's own last token, the readout token
    masked out of attention like padding (exactly the model run on the row without it)."""
    last = _last_positions(attention_mask)
    if (last < 1).any():
        raise ValueError("a row holds only the readout token; there is no input token to read")
    mask = attention_mask.clone()
    mask[torch.arange(mask.shape[0], device=mask.device), last] = 0
    return mask, last - 1


def _whole_mask(attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    return attention_mask, None


def _last_token_logits(model, base, input_ids, attention_mask, at) -> torch.Tensor:
    # a 2-D integer logits_to_keep keeps one position per row: the LM head runs only there
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=at[:, None])
    return out.logits[:, 0]


def _last_token_score(model, base, input_ids, attention_mask, at) -> torch.Tensor:
    hidden = _final_hidden(model, base, input_ids, attention_mask)
    # decoder-only classifiers in transformers name their head `score`
    return base.score(torch.take_along_dim(hidden, at[:, None, None], dim=1)[:, 0])


def _final_hidden(model, base, input_ids, attention_mask) -> torch.Tensor:
    """The last layer's hidden states after the final norm, ``[batch, seq, d_model]``. A
    bare classifier (no peft or DDP wrapper, no forward patched by accelerate's mixed
    precision) has its decoder called alone: the same tensor as the classifier's last
    ``hidden_states``, without its head on every position, its own pooling or the
    collection of every layer's states (which also breaks a compiled graph)."""
    decoder = getattr(base, getattr(base, "base_model_prefix", ""), None)
    if model is base and "forward" not in vars(base) and isinstance(decoder, nn.Module):
        return decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    return out.hidden_states[-1]


def _last_token_logits_full(model, base, input_ids, attention_mask, at) -> torch.Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[torch.arange(logits.shape[0], device=logits.device), at]


def _decoder_step(model, base, input_ids, attention_mask, at) -> torch.Tensor:
    start = base.config.decoder_start_token_id
    decoder_input_ids = torch.full(
        (input_ids.shape[0], 1), start, dtype=input_ids.dtype, device=input_ids.device
    )
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
    )
    return out.logits[:, 0]


def _pooled(model, base, input_ids, attention_mask, at) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


@dataclass(frozen=True)
class ReadoutMode:
    """How one readout mode reads the answer: ``where(attention_mask) -> (the mask the
    model sees, the positions read or None)``, then ``read(model, base, input_ids,
    mask, positions) -> [batch, n_out]``. ``packs``: ``read`` is pure tensor work on a
    decoder-only model, so it also runs under ``vmap`` with a 4-D additive mask
    (probe.train.pack)."""

    where: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]
    read: Callable[..., torch.Tensor]
    packs: bool = False


READOUT_MODES: dict[str, ReadoutMode] = {
    "last_token_logits": ReadoutMode(_at_last, _last_token_logits, packs=True),
    "last_token_score": ReadoutMode(_at_last, _last_token_score, packs=True),
    "input_last_token_logits": ReadoutMode(_at_input_last, _last_token_logits, packs=True),
    "last_token_logits_full": ReadoutMode(_at_last, _last_token_logits_full),
    "decoder_step": ReadoutMode(_whole_mask, _decoder_step),
    "pooled": ReadoutMode(_whole_mask, _pooled),
}


def readout_mode(model: nn.Module) -> ReadoutMode:
    """The :class:`ReadoutMode` :func:`readout` uses for ``model`` (peft and DDP wrappers
    looked through); MLP baselines have none (``ValueError``)."""
    base = _unwrapped(model)
    if isinstance(base, SymbolMLP):
        raise ValueError("the MLP baselines return their output: they have no readout mode")
    modes = paper.readouts(base) if paper.is_paper_model(base) else arch_spec(base).readouts
    return READOUT_MODES[modes[label_kind_of(base)]]


def additive_mask(model: nn.Module, attention_mask: torch.Tensor) -> torch.Tensor:
    """The 4-D float mask ``[batch, 1, seq, seq]`` (0 where a query may attend a key, the
    dtype's minimum elsewhere) a decoder-only model builds from a 2-D padding mask: causal
    unless its config says ``is_causal = False`` (the paper model). transformers' mask
    helpers take a 4-D mask as it is, so a model called with this one computes what it
    computes with the 2-D mask, without the helpers' data-dependent branches (which
    ``vmap`` refuses)."""
    base = _unwrapped(model)
    seq = attention_mask.shape[-1]
    keys = attention_mask.bool()[:, None, None, :]
    if getattr(base.config, "is_causal", True):
        keys = keys & torch.ones(seq, seq, dtype=torch.bool, device=keys.device).tril()
    dtype = base.dtype if base.dtype.is_floating_point else torch.float32
    zeros = torch.zeros(keys.shape, dtype=dtype, device=keys.device)
    return zeros.masked_fill(~keys, torch.finfo(dtype).min)


def _unwrapped(model: nn.Module) -> nn.Module:
    base = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return base.get_base_model() if hasattr(base, "get_base_model") else base


# --- building blocks ---------------------------------------------------------------------


def _requested_label_kind(task: Any, label_kind: str | None) -> str | None:
    task_kind = getattr(task, "label_kind", None) if task is not None else None
    if task is not None and task_kind not in LABEL_KINDS:
        raise ValueError(
            f"task {task!r} has label_kind={task_kind!r}; expected one of {LABEL_KINDS}"
        )
    if label_kind is not None and label_kind not in LABEL_KINDS:
        raise ValueError(f"label_kind={label_kind!r}; expected one of {LABEL_KINDS}")
    if task_kind and label_kind and task_kind != label_kind:
        raise ValueError(
            f"label_kind={label_kind!r} contradicts the task's label_kind {task_kind!r}; "
            "drop label_kind= (the task decides)"
        )
    return task_kind or label_kind


def _checkpoint_label_kind(config: PreTrainedConfig) -> str:
    """What a checkpoint was trained for: probe's record, a one-output classifier
    (regression), else the language-model head (symbolic)."""
    recorded = getattr(config, "probe_label_kind", None)
    if recorded in LABEL_KINDS:
        return recorded
    classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or ())
    return "regression" if classifier and config.num_labels == 1 else "symbolic"


def _config_fields(config: PreTrainedConfig) -> set[str]:
    return set(config.to_dict()) | set(config.attribute_map)


def _absolute_positions(name: str, spec: ArchSpec, task: Any, value: Any) -> int:
    """The ``absolute_positions`` override's table length; only for models without learned
    position embeddings (RoPE models; T5, whose decoder shares the input table and so gets
    the positions too)."""
    if spec.position_embeddings:
        without = sorted(n for n, s in ARCHITECTURES.items() if not s.position_embeddings)
        raise ValueError(
            f"absolute_positions is for models without position embeddings "
            f"({', '.join(without)}); {name} ({spec.model_type}) has them already"
        )
    return positions_for(task, value)


def _check_overrides(config: PreTrainedConfig, overrides: Mapping[str, Any]) -> None:
    fields = _config_fields(config)
    unknown = sorted(set(overrides) - fields)
    if unknown:
        hints = "".join(did_you_mean(k, fields) for k in unknown)
        raise TypeError(
            f"unknown config override(s) {unknown} for {type(config).__name__}.{hints} Its "
            f"fields are: {', '.join(sorted(fields))}"
        )


def _with_overrides(config: PreTrainedConfig, overrides: Mapping[str, Any]) -> PreTrainedConfig:
    """A new config with ``overrides`` applied, derived fields re-derived."""
    if not overrides:
        return config
    amap = config.attribute_map
    overrides = {amap.get(k, k): v for k, v in overrides.items()}
    values = config.to_dict()
    for derived, sources in _DERIVED_FIELDS.items():
        if derived in values and derived not in overrides:
            sources = [amap.get(s, s) for s in sources]
            touched = any(s in overrides for s in sources)
            if touched and values[derived] == _derive(derived, values, sources):
                values[derived] = None
    values.update(overrides)
    for key in _SPECIAL_IDS:  # e.g. GPT-2's eos 50256 after vocab_size=40
        value = values.get(key)
        if isinstance(value, int) and value >= values["vocab_size"]:
            values[key] = None
    return type(config).from_dict(values)


def _derive(derived: str, values: Mapping[str, Any], sources: list[str]) -> Any:
    if any(values.get(s) is None for s in sources):
        return object()  # not derivable: never equal to the stored value
    if derived == "head_dim":
        return values[sources[0]] // values[sources[1]]
    return values[sources[0]]


def _vocabulary(
    config: PreTrainedConfig, tokenizer: Any, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """From scratch: the tokenizer's vocabulary size and special ids as config values."""
    if tokenizer is None:
        return {}
    values = {"vocab_size": len(tokenizer), "pad_token_id": pad_token_id(tokenizer)}
    asked = overrides.get("vocab_size")
    if asked is not None and asked < len(tokenizer):
        raise ValueError(
            f"vocab_size={asked} is smaller than the tokenizer's {len(tokenizer)} tokens; "
            "drop vocab_size= (the tokenizer sets it)"
        )
    for key in ("bos_token_id", "eos_token_id"):
        values[key] = getattr(tokenizer, key, None)
    if config.is_encoder_decoder:  # T5 starts decoding from its pad token
        values["decoder_start_token_id"] = values["pad_token_id"]
    return values


_SPECIAL_IDS = ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id")


def _set_head(config: PreTrainedConfig, spec: ArchSpec, kind: str, tokenizer: Any) -> None:
    """Point the config's special ids at the data's and shape the regression head."""
    if tokenizer is not None:
        config.pad_token_id = pad_token_id(tokenizer)  # the id the rendered rows pad with
    if config.is_encoder_decoder and getattr(config, "decoder_start_token_id", None) is None:
        config.decoder_start_token_id = config.pad_token_id  # T5Config() leaves it unset
    if kind != "regression":
        return
    config.num_labels = 1
    config.problem_type = "regression"
    if config.pad_token_id is None:
        # transformers' classifiers refuse batches without a pad id; readout itself finds the
        # readout position from the attention mask, so any id will do
        eos = config.eos_token_id
        config.pad_token_id = eos if isinstance(eos, int) else 0
    if spec.pooled_token_key and tokenizer is not None:
        setattr(config, spec.pooled_token_key, readout_token_id(tokenizer))


def _match_tokenizer(model: nn.Module, tokenizer: Any) -> None:
    """Pretrained: resize the token embeddings where the tokenizer's ids would not fit."""
    rows = model.get_input_embeddings().weight.shape[0]
    size = len(tokenizer)
    if size > rows or (isinstance(tokenizer, SymbolTokenizer) and size != rows):
        logger.warning(
            "resizing %s's token embeddings from %d to %d rows to match the tokenizer; "
            "ids below %d keep the checkpoint's rows",
            type(model).__name__,
            rows,
            size,
            min(rows, size),
        )
        model.resize_token_embeddings(size)


# From scratch, models above this many parameters need allow_large=True (a 7B model
# takes ~27 GB in fp32 before training starts)
LARGE_PARAMS = 1_000_000_000


def _rough_params(config: PreTrainedConfig, spec: ArchSpec) -> int:
    """An upper-end guess of a config's parameter count, from its width, depth and
    vocabulary (no model built): enough to tell a small model from a large one."""
    d = getattr(config, spec.d_model_key, 0) or 0
    layers = getattr(config, spec.n_layers_key, 0) or 0
    layers += getattr(config, "num_decoder_layers", 0) or 0  # T5's decoder
    ff = max(
        (getattr(config, k, 0) or 0 for k in ("intermediate_size", "n_inner", "d_ff")),
        default=0,
    )
    ff = ff or 4 * d
    return layers * (4 * d * d + 3 * d * ff) + 2 * (getattr(config, "vocab_size", 0) or 0) * d


def _default_shape(
    name: str, config: PreTrainedConfig, spec: ArchSpec, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """From scratch with no shape given: the architecture's default config when it is
    small (GPT2Config() is gpt2's 124M), else the small shape (``SMALL_SHAPE``; e.g.
    LlamaConfig() is 7B), logged."""
    overrides = dict(overrides)
    if spec.shape is None:
        return overrides
    keys = set(spec.shape(1, 1, 1)) | {spec.d_model_key, spec.n_layers_key, spec.n_heads_key}
    amap = config.attribute_map
    given = {amap.get(k, k) for k in overrides}
    if given & {amap.get(k, k) for k in keys} or _rough_params(config, spec) <= LARGE_PARAMS:
        return overrides
    shape = spec.shape(SMALL_SHAPE["n_layer"], SMALL_SHAPE["n_embd"], SMALL_SHAPE["n_head"])
    logger.warning(
        "%s from scratch: no shape given and %s() is %.1fB parameters, so the small shape: "
        "%d layers, width %d, %d heads (pass %s for another)",
        name,
        type(config).__name__,
        _rough_params(config, spec) / 1e9,
        SMALL_SHAPE["n_layer"],
        SMALL_SHAPE["n_embd"],
        SMALL_SHAPE["n_head"],
        "=, ".join(spec.shape(1, 1, 1)) + "=",
    )
    return {**shape, **overrides}


def _refuse_large(name: str, auto_class: Any, config: PreTrainedConfig) -> None:
    """Refuse a from-scratch model above ``LARGE_PARAMS`` before allocating it (counted
    on the meta device, which holds no memory)."""
    if _rough_params(config, arch_spec(config)) <= LARGE_PARAMS // 4:
        return
    with torch.device("meta"):
        n = sum(p.numel() for p in auto_class.from_config(config).parameters())
    if n > LARGE_PARAMS:
        raise ValueError(
            f"{name} from scratch with this shape has {n / 1e9:.1f}B parameters (more than "
            f"{LARGE_PARAMS / 1e9:.0f}B, ~{4 * n / 2**30:.0f} GB in fp32); pass "
            f"allow_large=True (probe finetune: --model-override allow_large=True) to "
            f"build it anyway, or a smaller shape"
        )


def _record_label_kind(model: nn.Module, kind: str) -> nn.Module:
    model.probe_label_kind = kind
    model.config.probe_label_kind = kind  # saved with the config, so reloads know it
    return model


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw under ``torch.manual_seed(seed)`` without disturbing the global generator
    (no-op for None)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


# --- the MLP baselines -------------------------------------------------------------------


def _build_mlp(
    name: str,
    kind: str,
    task: Any,
    tokenizer: Any,
    seed: int | None,
    overrides: Mapping[str, Any],
) -> SymbolMLP:
    values: dict[str, Any] = {**MLP_DEFAULTS, **variant_config(name), "label_kind": kind}
    templates = getattr(task, "templates", None)
    if templates:  # the longest rendered row: a template, then the readout token
        values["max_length"] = max(len(t.tokens) for t in templates) + 1
    if tokenizer is not None:
        values.update(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    _check_overrides(SymbolMLPConfig(), overrides)
    values.update(overrides)
    with seeded(seed):
        model = SymbolMLP(SymbolMLPConfig(**values))
    return _record_label_kind(model, kind)


def _load_mlp(
    folder: str,
    config: PreTrainedConfig,
    pretrained: bool,
    kind: str,
    seed: int | None,
    overrides: Mapping[str, Any],
) -> SymbolMLP:
    if kind != config.label_kind:
        raise ValueError(f"the MLP in {folder!r} reads {config.label_kind!r} labels, not {kind!r}")
    config = _with_overrides(config, overrides)
    with seeded(seed):
        model = (
            SymbolMLP.from_pretrained(folder, config=config) if pretrained else SymbolMLP(config)
        )
    return _record_label_kind(model, kind)
