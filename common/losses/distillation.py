"""The distillation loss of Liu et al. (2021): soft Dice between student and teacher at temperature T (eqs. 4, 7)."""

from __future__ import annotations

import torch
from monai.losses import DiceLoss
from torch import Tensor, nn

from common.errors import RobustsegError
from common.utils.validation import check_number

__all__ = ["DistillationDiceLoss"]


class DistillationDiceLoss(nn.Module):
    """Soft Dice loss of a distilled student against its teacher's soft labels (Liu et al. 2021, eqs. 4 and 7).

    Both networks' logits ``z`` are turned into soft labels at the same temperature ``T`` (eq. 4)::

        [F(X)]_i = exp(z_i / T) / sum_l exp(z_l / T)

    and for each sample and foreground class ``i`` (background, channel 0, ignored as in eq. 5)::

        D_i = (2 * sum(p_i * q_i) + smooth) / (sum(p_i) + sum(q_i) + smooth)

    with ``p`` the student's and ``q`` the teacher's soft labels (eq. 7); the loss is ``1 - mean_i D_i``, averaged
    over the batch. Like :class:`~common.losses.SoftDiceLoss` this averages over the ``N - 1`` foreground classes
    where the paper writes ``1/N``: a constant factor that changes neither the minimiser nor any gradient direction.

    Computed by MONAI's :class:`~monai.losses.DiceLoss` with ``soft_label=False`` on the two softmax outputs: that
    is exactly eq. 7 (``sum(p*q)`` over ``sum(p) + sum(q)``), checked against a hand computation in
    ``tests/losses/test_distillation.py``. MONAI's ``soft_label=True`` is a different (semimetric) formula, not the
    paper's.

    Temperature at training and at test time: this loss divides the logits by ``T``, so the student learns logits
    ``T`` times larger than its soft labels need. It is used only in training; at test time (validation, inference,
    attacks) the student runs at ``T = 1``, i.e. its raw logits, as in the paper (Papernot et al. 2016). The teacher
    logits get no gradient.

    Teacher temperature: eq. 7 softens the teacher at the same ``T`` because, in defensive distillation, the teacher
    was itself trained at ``T`` (Papernot et al. 2016), so its logits are about ``T`` times those of a network trained
    at ``T = 1`` and ``softmax(z_teacher / T)`` is an informative soft label. A teacher trained at ``T = 1`` (the
    undefended baseline) softened at a large ``T`` gives nearly uniform targets instead; with the background class
    ignored, the Dice of eq. 7 is then maximised by moving probability mass to the foreground classes everywhere (a
    run at T = 5000 collapsed to a validation Dice of 0.15 in four epochs). ``teacher_temperature`` sets the
    temperature of the teacher's soft labels separately: ``1`` for a baseline teacher is the soft label a teacher
    trained at ``T`` would give (``z_T / T`` approximately equal to ``z_1``), while the student is still trained at
    ``T`` and so still learns logits ``T`` times larger.

    Args:
        temperature: the distillation temperature ``T`` > 0 (the paper uses 20, 100, 500 and 5000); 1 is the
            ordinary softmax.
        teacher_temperature: temperature of the teacher's soft labels; ``None`` (default) = ``temperature``, eq. 7
            as written for a teacher trained at ``T``; ``1`` for a teacher trained at ``T = 1``.
        smooth: the smoothing term gamma of eq. 7, added to numerator and denominator, >= 0.
        include_background: also score channel 0 (the paper does not).

    Raises:
        RobustsegError: if ``temperature`` <= 0 or not finite, or ``smooth`` < 0 (at construction); if the student
            and teacher logits differ in shape (when called).

    Example::

        loss = DistillationDiceLoss(temperature=100)
        with torch.no_grad():
            teacher_logits = teacher(images)
        value = loss(student(images), teacher_logits)
    """

    def __init__(
        self,
        temperature: float,
        smooth: float = 1e-5,
        include_background: bool = False,
        teacher_temperature: float | None = None,
    ) -> None:
        super().__init__()
        self.temperature = check_number("temperature", temperature, 0, min_inclusive=False)
        self.teacher_temperature = (
            check_number("teacher_temperature", teacher_temperature, 0, min_inclusive=False)
            if teacher_temperature is not None
            else self.temperature
        )
        self.smooth = check_number("smooth", smooth, 0)
        self.include_background = bool(include_background)
        self.dice = DiceLoss(
            include_background=self.include_background,
            to_onehot_y=False,
            softmax=False,
            smooth_nr=self.smooth,
            smooth_dr=self.smooth,
            batch=False,
            soft_label=False,  # eq. 7 as written; see the class docstring
            reduction="mean",
        )

    def soft_labels(self, logits: Tensor) -> Tensor:
        """Eq. 4: softmax of ``logits`` (B, C, *spatial) at this loss's temperature, in float32."""
        return torch.softmax(logits.float() / self.temperature, dim=1)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        """Loss (scalar) of ``student_logits`` against ``teacher_logits``, both (B, C, *spatial) raw logits."""
        if student_logits.shape != teacher_logits.shape:
            raise RobustsegError(
                f"student logits of shape {tuple(student_logits.shape)} do not match teacher logits of shape "
                f"{tuple(teacher_logits.shape)} (same network output expected)."
            )
        teacher = torch.softmax(teacher_logits.detach().float() / self.teacher_temperature, dim=1)
        return self.dice(self.soft_labels(student_logits), teacher)

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, teacher_temperature={self.teacher_temperature}, smooth={self.smooth}, "
            f"include_background={self.include_background}"
        )
