"""Build the models probe trains, and read their answer at the readout position.

``build_model`` turns a name into a Hugging Face model with the head a task
needs; ``readout`` returns that head's output for a batch::

    model = build_model("gpt2", task=task, tokenizer=tok, pretrained=False, n_layer=2)
    logits = readout(model, input_ids, attention_mask)   # [batch, n_out]

``n_out`` is 1 for regression labels and the vocabulary size for symbolic
labels. What each architecture uses for each label kind (which Auto class,
how the answer is read) is in ``probe.architectures.ARCHITECTURES``.

Names ``build_model`` accepts:

- a Hub id (``gpt2``, ``gpt2-medium``, ``t5-small``, ``HuggingFaceTB/SmolLM2-135M``)
  or a local folder saved with ``save_pretrained``;
- a GGUF file: a path ending in ``.gguf``, or ``gguf_file=`` beside a folder or Hub id;
- an architecture name (``gpt2``, ``t5``, ``llama``, ``bert``, or an alias such
  as ``smollm2``) with ``pretrained=False``: built from the architecture's
  default config class (``GPT2Config()``, ``T5Config()``, ...) and the
  overrides, without asking the Hub, so small models build offline (and the
  same online). ``GPT2Config()`` is the ``gpt2`` checkpoint's configuration;
  ``LlamaConfig()`` is 7B-sized, so pass the shape;
- a from-scratch preset (``SCRATCH_PRESETS``; ``small-gpt2`` is the paper's
  small transformer) or an MLP baseline (``mlp``, ``mlp_xxt``, and the official
  code's ``mlp_onehot``, ``mlp_onehot_xxt``; see ``probe.mlp``);
- ``paper``: the official code's template-task transformer (bidirectional,
  dropout 0, no attention biases, d_head 64), built from GPT-2 (``probe.paper``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import huggingface_hub
import torch
import transformers
from torch import nn
from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING

from probe import paper
from probe.architectures import ALIASES, ARCHITECTURES, ArchSpec, arch_spec
from probe.mlp import LABEL_KINDS, MLP_VARIANTS, SymbolMLP, SymbolMLPConfig, variant_config
from probe.templates import did_you_mean
from probe.tokenizer import SymbolTokenizer, pad_token_id, readout_token_id

logger = logging.getLogger(__name__)

# name -> (architecture, config overrides): models that exist only as a configuration.
# small-gpt2 is the paper's small transformer: 2 layers, 128 wide, 4 heads, read out at
# the last position (the measurements use it).
SCRATCH_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "small-gpt2": ("gpt2", {"n_layer": 2, "n_embd": 128, "n_head": 4}),
}

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
    **config_overrides: Any,
) -> nn.Module:
    """A Hugging Face model (or MLP baseline) with the head ``task``'s labels need.

    Args:
        name_or_path: Hub id, local folder, ``.gguf`` file, architecture name,
            preset (``SCRATCH_PRESETS``) or MLP baseline (``mlp``, ``mlp_xxt``).
        task: a ``TemplateTask``; only its ``label_kind`` is read.
        tokenizer: from scratch, the vocabulary is ``len(tokenizer)`` and the
            bos/eos ids are the tokenizer's; the pad id is the one rendered rows
            pad with (``probe.tokenizer.pad_token_id``: the readout id for GPT-2).
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
        **config_overrides: config fields (``n_layer``, ``n_embd``, ``hidden_size``, ...).

    Returns:
        the model, with ``model.probe_label_kind`` (also stored in its config).
        Regression: a sequence classifier with one output
        (``problem_type="regression"``). Symbolic: a causal LM, T5 as
        seq2seq LM, BERT as masked LM read at the readout token.
    """
    name = os.fspath(name_or_path)
    kind = _requested_label_kind(task, label_kind)
    if name in MLP_VARIANTS:
        return _build_mlp(name, kind or "symbolic", task, tokenizer, seed, config_overrides)
    if name == paper.PAPER:  # the official model, from GPT-2 (probe.paper)
        return paper.build_paper_model(
            task,
            tokenizer,
            label_kind=kind,
            attn_implementation=attn_implementation,
            seed=seed,
            **config_overrides,
        )

    if name in SCRATCH_PRESETS:
        name, preset = SCRATCH_PRESETS[name]
        config_overrides = {**preset, **config_overrides}
        pretrained = False
    folder, gguf = _locate(name, gguf_file)
    config = _load_config(name, folder, gguf, pretrained)
    kind = kind or _checkpoint_label_kind(config)

    if config.model_type == SymbolMLPConfig.model_type:  # a saved MLP baseline
        return _load_mlp(folder, config, pretrained, kind, seed, config_overrides)

    spec = arch_spec(config)
    if kind not in spec.heads:
        raise ValueError(
            f"{spec.model_type} has no head for {kind!r} labels in probe.architectures "
            f"(it has: {sorted(spec.heads)})"
        )
    _check_overrides(config, config_overrides)
    vocabulary = _vocabulary(config, tokenizer, config_overrides) if not pretrained else {}
    config = _with_overrides(config, {**vocabulary, **config_overrides})
    _set_head(config, spec, kind, tokenizer)

    auto_class = getattr(transformers, spec.heads[kind])
    load_kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    with _seeded(seed):
        if pretrained:
            if gguf:
                load_kwargs["gguf_file"] = gguf
            model = auto_class.from_pretrained(folder, config=config, **load_kwargs)
        else:
            model = auto_class.from_config(config, **load_kwargs)
            unit_scale_embeddings(model, spec)
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
    base = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    base = base.get_base_model() if hasattr(base, "get_base_model") else base
    if isinstance(base, SymbolMLP):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits
    mode = arch_spec(base).readouts[label_kind_of(base)]
    return _READOUTS[mode](model, base, input_ids, attention_mask)


def label_kind_of(model: nn.Module) -> str:
    """``"regression"`` or ``"symbolic"``: what ``build_model`` recorded, else the head's class."""
    kind = getattr(model, "probe_label_kind", None) or getattr(
        model.config, "probe_label_kind", None
    )
    if kind is None:
        name = type(model).__name__
        kind = "regression" if name.endswith("ForSequenceClassification") else "symbolic"
    return kind


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


def _last_token_logits(model, base, input_ids, attention_mask) -> torch.Tensor:
    last = _last_positions(attention_mask)
    # a 2-D integer logits_to_keep keeps one position per row: the LM head runs only there
    out = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=last[:, None])
    return out.logits[:, 0]


def _last_token_score(model, base, input_ids, attention_mask) -> torch.Tensor:
    last = _last_positions(attention_mask)
    out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    hidden = out.hidden_states[-1]  # [batch, seq, d_model], after the final norm
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    # decoder-only classifiers in transformers name their head `score`
    return base.score(hidden[rows, last])


def _last_token_logits_full(model, base, input_ids, attention_mask) -> torch.Tensor:
    last = _last_positions(attention_mask)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits[torch.arange(logits.shape[0], device=logits.device), last]


def _decoder_step(model, base, input_ids, attention_mask) -> torch.Tensor:
    start = base.config.decoder_start_token_id
    decoder_input_ids = torch.full(
        (input_ids.shape[0], 1), start, dtype=input_ids.dtype, device=input_ids.device
    )
    out = model(
        input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids
    )
    return out.logits[:, 0]


def _pooled(model, base, input_ids, attention_mask) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


_READOUTS = {
    "last_token_logits": _last_token_logits,
    "last_token_score": _last_token_score,
    "last_token_logits_full": _last_token_logits_full,
    "decoder_step": _decoder_step,
    "pooled": _pooled,
}


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


def _locate(name: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file name or None); checks local files exist."""
    if name.endswith(".gguf"):
        if gguf_file is not None:
            raise ValueError(f"pass either a .gguf path ({name!r}) or gguf_file=, not both")
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {str(path)!r}")
        return str(path.parent), path.name
    path = Path(name).expanduser()
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            raise FileNotFoundError(f"no GGUF file {gguf_file!r} in {str(path)!r}")
        return str(path), gguf_file
    if name.startswith((".", "/", "~")) or name.count("/") > 1:  # a path, not a Hub id
        raise FileNotFoundError(f"no folder or file at {name!r}")
    return name, gguf_file


def _architecture_key(name: str) -> str | None:
    """The transformers model type an architecture name stands for, if it is one."""
    if name in ARCHITECTURES:
        return name
    if name in ALIASES:  # "mistral" is a transformers type of its own, "smollm2" is not
        return name if name in CONFIG_MAPPING else ALIASES[name]
    return None


def _load_config(name: str, folder: str, gguf: str | None, pretrained: bool) -> PreTrainedConfig:
    architecture = _architecture_key(name)
    local = Path(folder).is_dir()
    if architecture is None and not pretrained and not local and name in CONFIG_MAPPING:
        # a transformers architecture probe has no table row for (e.g. "bloom"): say so
        # rather than look it up on the Hub as a checkpoint
        arch_spec(AutoConfig.for_model(name))
    if architecture is not None and not pretrained and not local:
        # the default config class, never the Hub: GPT2Config() is the gpt2 checkpoint's
        # configuration, and "t5", "llama", "bert" name no checkpoint at all
        return AutoConfig.for_model(architecture)
    if not local:
        _check_hub(name, gguf, architecture)
    if gguf:
        return AutoConfig.from_pretrained(folder, gguf_file=gguf)
    return AutoConfig.from_pretrained(folder)


def _check_hub(name: str, gguf: str | None, architecture: str | None) -> None:
    """Fail at once when a Hub id is neither cached nor reachable in one request.

    huggingface_hub itself retries a missing file for up to a minute; a user who
    is offline wants the error now, with what to do about it.
    """
    filename = gguf or "config.json"
    try:
        cached = huggingface_hub.try_to_load_from_cache(name, filename)
    except ValueError:  # not a repo id at all
        raise ValueError(
            f"{name!r} is not a local folder or file, a Hub id, an architecture "
            f"({', '.join(sorted(ARCHITECTURES))}), a preset ({', '.join([*SCRATCH_PRESETS, paper.PAPER])}) "
            f"or an MLP baseline ({', '.join(MLP_VARIANTS)})"
        ) from None
    if isinstance(cached, str):
        return
    if huggingface_hub.is_offline_mode():
        raise OSError(_hub_message(name, architecture, "offline (HF_HUB_OFFLINE=1) and not cached"))
    try:
        huggingface_hub.get_hf_file_metadata(huggingface_hub.hf_hub_url(name, filename), timeout=10)
    except Exception as err:  # unreachable, missing, gated: one try, then a clear error
        reason = f"{type(err).__name__}: {err}"
        raise OSError(_hub_message(name, architecture, reason)) from err


def _hub_message(name: str, architecture: str | None, reason: str) -> str:
    scratch = (
        f" To build the {architecture} architecture with fresh weights instead, pass "
        "pretrained=False."
        if architecture
        else ""
    )
    return (
        f"could not load {name!r} from the Hugging Face Hub ({reason}). Download it on a "
        f"machine with internet (`hf download {name} --local-dir DIR`), copy DIR here and "
        "pass build_model(DIR), or pass a GGUF file (a .gguf path, or gguf_file=)."
        + scratch
        + did_you_mean(
            name, [*ARCHITECTURES, *ALIASES, *SCRATCH_PRESETS, paper.PAPER, *MLP_VARIANTS]
        )
    )


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


def _record_label_kind(model: nn.Module, kind: str) -> nn.Module:
    model.probe_label_kind = kind
    model.config.probe_label_kind = kind  # saved with the config, so reloads know it
    return model


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
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
    with _seeded(seed):
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
    with _seeded(seed):
        model = (
            SymbolMLP.from_pretrained(folder, config=config) if pretrained else SymbolMLP(config)
        )
    return _record_label_kind(model, kind)
