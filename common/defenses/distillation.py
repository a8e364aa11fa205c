"""Defensive distillation's training iteration (Liu et al. 2021, "Defenses", eqs. 4 and 7)."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch import Tensor, nn

from common.defenses.training_step import TrainingStep, unwrap_network
from common.errors import RobustsegError
from common.losses.distillation import DistillationDiceLoss
from common.utils.validation import check_number

__all__ = ["DistillationStep"]


class DistillationStep(TrainingStep):
    """``iteration_update`` for ``SupervisedTrainer`` that trains the distilled network F^d on a teacher's soft labels.

    For each batch: the teacher's logits (``torch.no_grad()``, through the trainer's ``inferer``), the student's
    logits (through the ``inferer``), the loss ``DistillationDiceLoss(T)(student_logits, teacher_logits)`` -- soft
    Dice between the two softmax outputs at temperature ``T`` (eqs. 4, 7) -- one backward pass and one optimizer
    step. The teacher's soft labels are computed on the fly on each (augmented) batch, which is the paper's "outputs
    of F replace the one-hot labels" for a training set that is augmented online.

    The loss is the trainer's ``loss_function``, which must be a :class:`~common.losses.DistillationDiceLoss` of the
    same temperature: it also fixes the temperature of the teacher's soft labels (``teacher_temperature``: ``T`` for a
    teacher trained at ``T``, the paper's recipe; ``1`` for a teacher trained at ``T = 1``), which no default can
    guess -- a teacher trained at ``T = 1`` softened at a large ``T`` gives nearly uniform labels and training
    collapses. The ground-truth labels play no part in the loss.

    Output (``engine.state.output``): ``image`` and ``label`` (the ground truth, for training metrics), ``pred`` the
    student's raw logits -- the student at ``T = 1``, as it is validated, deployed and attacked -- and ``loss``.
    Events as in MONAI's ``SupervisedTrainer``.

    Args:
        teacher: the trained network F, e.g. from :func:`~common.defenses.load_teacher`; it is put in eval mode with
            gradients off, and moved to the batch's device at the first iteration if it is elsewhere.
        temperature: the distillation temperature ``T`` > 0 (the paper: 20, 100, 500, 5000); the trainer's loss must
            have the same.

    Raises:
        RobustsegError: if ``teacher`` is not a ``torch.nn.Module`` or ``temperature`` <= 0 (at construction); at the
            first iteration, if the teacher is the trained network itself, the trainer's ``loss_function`` is not a
            ``DistillationDiceLoss`` or has another temperature, or teacher and student logits differ in shape.

    Example::

        "teacher": {"_target_": "common.defenses.load_teacher", "bundle": "brats_unet3d_baseline", "device": "@device"},
        "loss": {"_target_": "common.losses.DistillationDiceLoss", "temperature": 100, "teacher_temperature": 1},
        "train#trainer#iteration_update": {"_target_": "common.defenses.DistillationStep", "teacher": "@teacher",
                                           "temperature": 100}
    """

    def __init__(self, teacher: nn.Module, temperature: float) -> None:
        if not isinstance(teacher, nn.Module):
            raise RobustsegError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}.")
        self.temperature = check_number("temperature", temperature, 0, min_inclusive=False)
        self.teacher = teacher.requires_grad_(False).eval()

    def loss_function(self, engine: Any) -> DistillationDiceLoss:
        """The trainer's ``loss_function``, checked: a ``DistillationDiceLoss`` at this step's temperature."""
        loss = engine.loss_function
        if not isinstance(loss, DistillationDiceLoss):
            raise RobustsegError(
                f"the trainer's loss_function is a {type(loss).__name__}, expected a DistillationDiceLoss: set loss to "
                f"common.losses.DistillationDiceLoss(temperature={self.temperature:g}, teacher_temperature=...) "
                "(teacher_temperature: the temperature the teacher was trained at)."
            )
        if loss.temperature != self.temperature:
            raise RobustsegError(
                f"the trainer's DistillationDiceLoss has temperature {loss.temperature}, the DistillationStep "
                f"{self.temperature}: give both the same temperature."
            )
        return loss

    def compute(self, engine: Any, inputs: Tensor, targets: Tensor, args: tuple, kwargs: dict) -> None:
        if self.teacher is unwrap_network(engine.network):
            raise RobustsegError("the teacher is the network being trained; load the teacher as a separate network.")
        parameter = next(self.teacher.parameters(), None)
        if parameter is not None and parameter.device != inputs.device:
            self.teacher.to(inputs.device)
        self.teacher.eval()  # a handler may have switched every module to train mode
        loss_function = self.loss_function(engine)
        with self.autocast(engine):
            with torch.no_grad():
                teacher_logits = self.forward(engine, self.teacher, inputs, args, kwargs)
            engine.state.output[Keys.PRED] = self.forward(engine, engine.network, inputs, args, kwargs)
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            engine.state.output[Keys.LOSS] = loss_function(engine.state.output[Keys.PRED], teacher_logits).mean()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)
        self.backward(engine, engine.state.output[Keys.LOSS])

    def __repr__(self) -> str:
        return f"{type(self).__name__}(teacher={type(self.teacher).__name__}, temperature={self.temperature})"
