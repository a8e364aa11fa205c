"""Certified robustness of segmentation: Gaussian randomized smoothing with per-voxel certificates (SegCertify,
Fischer, Baader & Vechev, ICML 2021) and certified Dice of the BraTS regions.

Example::

    from common.certify import GaussianSmoothing, certify, certified_dice
    certificate = certify(GaussianSmoothing(network, sigma=0.25), images, n0=10, n=100, alpha=0.001)
    dice = certified_dice(certificate, labels, radius=0.1)   # (B, 3): WT, TC, ET
"""

from __future__ import annotations

from common.certify.bounds import binomial_p_values, clopper_pearson_lower
from common.certify.certified_dice import NON_CERTIFIED, certified_dice, certified_region_masks
from common.certify.multiple_testing import CORRECTIONS, bonferroni, holm, reject
from common.certify.segcertify import ABSTAIN, Certificate, certify
from common.certify.smoothing import GaussianSmoothing

__all__ = [
    "ABSTAIN",
    "CORRECTIONS",
    "Certificate",
    "GaussianSmoothing",
    "NON_CERTIFIED",
    "binomial_p_values",
    "bonferroni",
    "certified_dice",
    "certified_region_masks",
    "certify",
    "clopper_pearson_lower",
    "holm",
    "reject",
]
