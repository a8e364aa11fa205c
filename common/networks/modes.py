"""A network's train/eval flags: run it in eval mode for a while and give every submodule its own flag back.

``model.train(was_training)`` after ``model.eval()`` would overwrite submodules that the caller had set differently
(a frozen, eval-mode encoder inside a training model, say); restoring the flags module by module does not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Run ``model`` in eval mode and give every submodule back its own train/eval flag, even on error.

    Args:
        model: a network; anything that is not an ``nn.Module`` (a plain function) is left alone.
    """
    if not isinstance(model, nn.Module):
        yield
        return
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
