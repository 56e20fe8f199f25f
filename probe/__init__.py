"""probe: when can transformers reason with abstract symbols?

Template tasks rendered as Hugging Face datasets whose test split uses unseen
symbols, the trainable identity scalings ``a``, ``b`` patched into Hugging Face
attention, training with accelerate, and the diagonal structure of attention
weights. The public names are imported lazily so ``import probe`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"  # the package version (pyproject.toml reads it from here)

# public name -> module that defines it
_EXPORTS = {
    "Template": "templates",
    "TemplateTask": "templates",
    "list_tasks": "tasks",
    "get_task": "tasks",
    "register_task": "tasks",
    "random_templates": "tasks",
    "SymbolTokenizer": "tokenizer",
    "render": "data",
    "save_dataset": "hub",
    "load_dataset": "hub",
    "build_model": "models",
    "readout": "models",
    "inject_ab": "identity",
    "remove_ab": "identity",
    "ab_values": "identity",
    "FinetuneConfig": "finetune",
    "finetune": "finetune",
    "attn_diagonal": "diagonal",
    "plot_diagonal": "diagonal_plots",
    "plot_head": "diagonal_plots",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"probe.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs
    from probe.data import render
    from probe.diagonal import attn_diagonal
    from probe.diagonal_plots import plot_diagonal, plot_head
    from probe.finetune import FinetuneConfig, finetune
    from probe.hub import load_dataset, save_dataset
    from probe.identity import ab_values, inject_ab, remove_ab
    from probe.models import build_model, readout
    from probe.tasks import get_task, list_tasks, random_templates, register_task
    from probe.templates import Template, TemplateTask
    from probe.tokenizer import SymbolTokenizer
