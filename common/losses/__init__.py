"""Losses: the paper's soft Dice (eq. 5) and temperature distillation (eqs. 4, 7), and segmentation attack losses
(masked and class-balanced cross-entropy, Jensen-Shannon, SegPGD, CosPGD)."""

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

__all__ = [
    "DistillationDiceLoss",
    "SegPGDLoss",
    "SoftDiceLoss",
    "balanced_cross_entropy",
    "cospgd_loss",
    "jensen_shannon",
    "masked_cross_entropy",
    "segpgd_loss",
]
