"""Validate once more at the end of training when the last epoch was not a validation epoch."""

from __future__ import annotations

from ignite.engine import Engine, Events
from monai.engines import Evaluator

__all__ = ["ValidateAtEnd"]


class ValidateAtEnd:
    """Run ``validator`` when training completes unless MONAI's ``ValidationHandler`` just did.

    With ``ValidationHandler(interval=k)`` a run of ``epochs`` not divisible by ``k`` ends without validating its
    last epochs, and one shorter than ``k`` never validates -- so the best-metric checkpoint (``model.pt``) would be
    missing or stale. This handler closes that gap.

    Args:
        validator: the evaluator (``validate#evaluator``).
        interval: the ``ValidationHandler`` interval in epochs.
    """

    def __init__(self, validator: Evaluator, interval: int) -> None:
        self.validator = validator
        self.interval = int(interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        epoch = engine.state.epoch
        if epoch > 0 and (self.interval <= 0 or epoch % self.interval != 0):
            self.validator.run(epoch)
