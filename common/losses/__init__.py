"""Losses: the paper's soft Dice (eq. 5), temperature distillation (eqs. 4, 7) and training at a temperature (a
distillation teacher), segmentation attack losses (cross-entropy, masked and class-balanced cross-entropy,
Jensen-Shannon, SegPGD, CosPGD; over the BraTS labels or, with ``values=``, any labels), their counterparts for sigmoid
region outputs, and :class:`ByOutput`, which picks one of the two by the output's channel count."""

from __future__ import annotations

from common.losses.by_output import ByOutput
from common.losses.distillation import DistillationDiceLoss
from common.losses.regions import (
    RegionSegPGDLoss,
    region_balanced_cross_entropy,
    region_cospgd_loss,
    region_cross_entropy,
    region_jensen_shannon,
    region_masked_cross_entropy,
    region_segpgd_loss,
    region_soft_dice,
)
from common.losses.segmentation import (
    SegPGDLoss,
    balanced_cross_entropy,
    cospgd_loss,
    cross_entropy,
    jensen_shannon,
    masked_cross_entropy,
    segpgd_loss,
)
from common.losses.soft_dice import SoftDiceLoss
from common.losses.temperature import TemperatureScaledLoss

__all__ = [
    "ByOutput",
    "DistillationDiceLoss",
    "RegionSegPGDLoss",
    "SegPGDLoss",
    "SoftDiceLoss",
    "TemperatureScaledLoss",
    "balanced_cross_entropy",
    "cospgd_loss",
    "cross_entropy",
    "jensen_shannon",
    "masked_cross_entropy",
    "region_balanced_cross_entropy",
    "region_cospgd_loss",
    "region_cross_entropy",
    "region_jensen_shannon",
    "region_masked_cross_entropy",
    "region_segpgd_loss",
    "region_soft_dice",
    "segpgd_loss",
]
