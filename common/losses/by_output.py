"""One attack loss for both output conventions: the softmax loss for 4 channels, its region counterpart for 3."""

from __future__ import annotations

import types
from collections.abc import Callable

from torch import Tensor, nn

from common.data.labels import BRATS_LABELS, check_output_channels

__all__ = ["ByOutput"]

LossFn = Callable[[Tensor, Tensor], Tensor]


def _describe(loss: LossFn) -> str:
    """A one-line name of a loss: a function's name, a module's class and settings, another object's ``repr``."""
    if isinstance(loss, (types.FunctionType, types.BuiltinFunctionType)):
        return loss.__name__
    if isinstance(loss, nn.Module):
        return f"{type(loss).__name__}({loss.extra_repr()})"
    return repr(loss)


class ByOutput:
    """An attack loss that follows the network's output convention (:mod:`common.data.labels`) at every call.

    ``logits.shape[1] == 4`` (softmax logits over the BraTS labels) calls ``softmax`` and returns exactly what it
    returns; ``3`` (sigmoid region logits WT, TC, ET) calls ``region``; any other channel count raises one
    :class:`~common.errors.RobustsegError` line naming it and the two accepted counts
    (:func:`~common.data.labels.check_output_channels`). ``set_step(step, steps)`` is passed on to each of the two
    losses that has one (SegPGD's schedule), so either can follow the attack's steps. This is what the names of
    :data:`common.attacks.base.LOSSES` build.

    Args:
        softmax: the loss of 4-channel softmax logits, ``(logits, labels) -> scalar``.
        region: the loss of 3-channel region logits, ``(logits, labels) -> scalar``.

    Example::

        loss = ByOutput(masked_cross_entropy, region_masked_cross_entropy)
        loss(net(images), labels)      # whichever convention net follows
    """

    def __init__(self, softmax: LossFn, region: LossFn) -> None:
        self.softmax = softmax
        self.region = region

    def __call__(self, logits: Tensor, labels: Tensor) -> Tensor:
        if check_output_channels(logits) == len(BRATS_LABELS):
            return self.softmax(logits, labels)
        return self.region(logits, labels)

    def set_step(self, step: int, steps: int) -> None:
        """Tell both losses, where they have a ``set_step`` method, that step ``step`` of ``steps`` comes next."""
        for loss in (self.softmax, self.region):
            set_step = getattr(loss, "set_step", None)
            if callable(set_step):
                set_step(step, steps)

    def __repr__(self) -> str:
        return f"ByOutput(softmax={_describe(self.softmax)}, region={_describe(self.region)})"
