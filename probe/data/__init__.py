"""Template tasks as Hugging Face datasets: tokenizers, symbol alphabets, the renderer
(``render``, a module: the function is ``probe.render``), the Hub layout on disk and
lm-evaluation-harness tasks (``lm_eval_task``).

``probe.data.task_info(dsd)`` and ``probe.data.dataset_tokenizer(dsd)`` read what travels
with a rendered dataset. The names load on first use, so importing a light module of
this package (``probe.data.lm_eval_task`` for the CLI's help) stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "dataset_task": "render",
    "dataset_tokenizer": "render",
    "load_dataset": "hub",
    "save_dataset": "hub",
    "task_info": "render",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'probe.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"probe.data.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:  # for type checkers and IDEs
    from probe.data.hub import load_dataset, save_dataset
    from probe.data.render import dataset_task, dataset_tokenizer, task_info
