"""Metrics: Dice per BraTS region, input quality (PSNR, SSIM, RMSE, perturbation norms), paired statistics."""

from __future__ import annotations

from common.metrics.image_quality import input_quality, perturbation_norms, psnr, rmse, ssim
from common.metrics.region_dice import region_dice
from common.metrics.stats import bonferroni, mean_sd, paired_comparison, wilcoxon_p

__all__ = [
    "region_dice",
    "psnr",
    "ssim",
    "rmse",
    "perturbation_norms",
    "input_quality",
    "mean_sd",
    "wilcoxon_p",
    "paired_comparison",
    "bonferroni",
]
