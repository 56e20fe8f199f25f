"""Template tasks as Hugging Face datasets: tokenizers, symbol alphabets, the renderer
(``render``, a module: the function is ``probe.render``) and the Hub layout on disk.

``probe.data.task_info(dsd)`` and ``probe.data.dataset_tokenizer(dsd)`` read what travels
with a rendered dataset.
"""

from probe.data.hub import load_dataset, save_dataset
from probe.data.render import dataset_task, dataset_tokenizer, task_info

__all__ = ["dataset_task", "dataset_tokenizer", "load_dataset", "save_dataset", "task_info"]
