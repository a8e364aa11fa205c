"""Losses: the paper's soft Dice (eq. 5), temperature distillation (eqs. 4, 7) and training at a temperature (a
distillation teacher), and segmentation attack losses (masked and class-balanced cross-entropy, Jensen-Shannon,
SegPGD, CosPGD)."""

from __future__ import annotations

from common.losses.distillation import DistillationDiceLoss
from common.losses.segmentation import (
    SegPGDLoss,
    balanced_cross_entropy,
    cospgd_loss,
    jensen_shannon,
    masked_cross_entropy,
    segpgd_loss,
)
from common.losses.soft_dice import SoftDiceLoss
from common.losses.temperature import TemperatureScaledLoss

__all__ = [
    "DistillationDiceLoss",
    "SegPGDLoss",
    "SoftDiceLoss",
    "TemperatureScaledLoss",
    "balanced_cross_entropy",
    "cospgd_loss",
    "jensen_shannon",
    "masked_cross_entropy",
    "segpgd_loss",
]
