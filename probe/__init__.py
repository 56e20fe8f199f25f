"""probe: when can transformers reason with abstract symbols?

Template tasks rendered as Hugging Face datasets whose test split uses unseen
symbols, the trainable identity scalings ``a``, ``b`` patched into Hugging Face
attention, training with accelerate, and the diagonal structure of attention
weights. The public names are imported lazily so ``import probe`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from probe._version import __version__

# public name -> module that defines it
_EXPORTS = {
    "Template": "tasks.templates",
    "TemplateTask": "tasks.templates",
    "list_tasks": "tasks.catalogue",
    "get_task": "tasks.catalogue",
    "register_task": "tasks.catalogue",
    "random_templates": "tasks.catalogue",
    "SymbolTokenizer": "data.tokenizer",
    "render": "data.render",
    "save_dataset": "data.hub",
    "load_dataset": "data.hub",
    "build_model": "models.build",
    "readout": "models.build",
    "inject_ab": "models.identity",
    "remove_ab": "models.identity",
    "ab_values": "models.identity",
    "FinetuneConfig": "train.config",
    "finetune": "train.run",
    "finetune_packed": "train.pack",
    "run_folder_dataset": "train.setup",
    "attn_diagonal": "analysis.diagonal",
    "plot_diagonal": "analysis.plots",
    "plot_head": "analysis.plots",
    "attention_scores": "analysis.attention",
    "linear_probe": "analysis.linear_probe",
    "plot_linear_probe": "analysis.plots",
    "load_metric": "train.metrics",
    "plot_attention": "analysis.plots",
    "load_injected": "models.identity",
    "resolve_model": "models.resolve",
    "task_info": "data.render",
    "dataset_tokenizer": "data.render",
}
# the stages of the flow, as subpackages: `probe.data.task_info(...)` works after a bare
# `import probe`
_SUBPACKAGES = ("tasks", "data", "models", "train", "analysis", "experiments", "cli")

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"probe.{name}")
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probe' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"probe.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # for type checkers and IDEs
    from probe.analysis.attention import attention_scores
    from probe.analysis.diagonal import attn_diagonal
    from probe.analysis.linear_probe import linear_probe
    from probe.analysis.plots import plot_attention, plot_diagonal, plot_head, plot_linear_probe
    from probe.data.hub import load_dataset, save_dataset
    from probe.data.render import dataset_tokenizer, render, task_info
    from probe.data.tokenizer import SymbolTokenizer
    from probe.models.build import build_model, readout
    from probe.models.identity import ab_values, inject_ab, load_injected, remove_ab
    from probe.models.resolve import resolve_model
    from probe.tasks.catalogue import get_task, list_tasks, random_templates, register_task
    from probe.tasks.templates import Template, TemplateTask
    from probe.train.config import FinetuneConfig
    from probe.train.metrics import load_metric
    from probe.train.pack import finetune_packed
    from probe.train.run import finetune
    from probe.train.setup import run_folder_dataset
