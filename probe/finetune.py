"""The launch script of one training run: ``accelerate launch -m probe.finetune ...``.

The run itself is :func:`probe.train.run.finetune` (``probe finetune`` and
``probe.finetune(config)`` run the same code). A package attribute and a
submodule cannot share a name, so once anything imports this file as
``probe.finetune`` Python binds that name to the module; the module is made
callable, so ``probe.finetune(config)`` and ``from probe import finetune`` give
something that runs a config in every import order.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and not __package__:
    # Run as a file: Python put probe/ itself first on sys.path, where its subpackages
    # would shadow top-level modules (probe/data vs datasets' imports); put the folder
    # holding the package there instead, so `import probe` finds this checkout.
    from pathlib import Path as _Path

    sys.path[0] = str(_Path(__file__).resolve().parent.parent)

import types  # noqa: E402

from probe.train.config import FinetuneConfig  # noqa: E402
from probe.train.run import finetune, main  # noqa: E402

__all__ = ["FinetuneConfig", "finetune", "main"]


class _CallableModule(types.ModuleType):
    """This module, callable as the function it is named after."""

    def __call__(self, config: FinetuneConfig):
        return finetune(config)


if __name__ == "__main__":
    main()
else:
    sys.modules[__name__].__class__ = _CallableModule
