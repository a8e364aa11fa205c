"""Metrics: Dice per BraTS region, input quality (PSNR, SSIM, RMSE, perturbation norms), paired statistics.

Names are imported on first use (PEP 562): ``robustseg stats`` needs scipy, not MONAI.
"""

from __future__ import annotations

from common._lazy import lazy_exports

_EXPORTS = {
    "dice": ["region_dice"],
    "image_quality": ["input_quality", "perturbation_norms", "psnr", "rmse", "ssim"],
    "stats": ["bonferroni", "mean_sd", "paired_comparison", "wilcoxon_p"],
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
