"""Losses of the paper: soft Dice (eq. 5) and temperature distillation (eqs. 4, 7)."""

from __future__ import annotations

from common.losses.distillation import DistillationDiceLoss
from common.losses.soft_dice import SoftDiceLoss

__all__ = ["DistillationDiceLoss", "SoftDiceLoss"]
