"""Training at a temperature: any segmentation loss applied to the logits divided by T (Papernot et al. 2016)."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from common.errors import RobustsegError
from common.utils.validation import check_number

__all__ = ["TemperatureScaledLoss"]


class TemperatureScaledLoss(nn.Module):
    """``loss(logits / T, target)``: train a network at temperature ``T``, the teacher of defensive distillation.

    Defensive distillation (Papernot et al. 2016; Liu et al. 2021, "Defenses", eq. 4) trains the teacher F itself at
    temperature ``T``: every softmax the training loss takes is ``softmax(z / T)``. Dividing the logits before the
    loss does exactly that for any loss of logits -- soft Dice (eq. 5), and the cross-entropy term the quick overlays
    add -- so the teacher learns logits about ``T`` times those of a network trained at ``T = 1``, and its soft labels
    ``softmax(z / T)`` stay informative. At test time the network runs on its raw logits (``T = 1``); ``T = 1`` here
    is the ordinary loss, unchanged.

    Args:
        loss: the training loss of ``(logits, target)``, e.g. :class:`~common.losses.SoftDiceLoss`.
        temperature: ``T`` > 0 (the paper's 20, 100, 500 or 5000 for a teacher; 1 for ordinary training).

    Raises:
        RobustsegError: if ``loss`` is not callable or ``temperature`` <= 0 or not finite.

    Example::

        "train#trainer#loss_function": {"_target_": "common.losses.TemperatureScaledLoss", "loss": "@loss",
                                        "temperature": "@train_temperature"}
    """

    def __init__(self, loss: Callable[[Tensor, Tensor], Tensor], temperature: float) -> None:
        super().__init__()
        if not callable(loss):
            raise RobustsegError(f"loss must be a callable of (logits, target), got {type(loss).__name__}.")
        self.loss = loss
        self.temperature = check_number("temperature", temperature, 0, min_inclusive=False)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The wrapped loss of ``logits / T`` (B, C, *spatial) against ``target``."""
        return self.loss(logits / self.temperature, target)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
