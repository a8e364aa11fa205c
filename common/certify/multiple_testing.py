"""Family-wise error control over the voxels of one volume: Bonferroni and Holm (Holm 1979).

A segmentation certificate makes one claim per voxel; SegCertify (Fischer et al. 2021, Section 4, Algorithm 1,
``FWERControl``) bounds the probability that *any* claim of a volume is wrong by ``alpha`` with Holm's step-down
procedure, uniformly more powerful than Bonferroni's (it rejects every hypothesis Bonferroni rejects, and maybe more).
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.utils.validation import check_number, look_up_option

__all__ = ["CORRECTIONS", "bonferroni", "holm", "reject"]


def _alpha(alpha: float) -> float:
    return check_number("alpha", alpha, 0, 1, min_inclusive=False, max_inclusive=False, hint="the family-wise error")


def bonferroni(p_values: Tensor, alpha: float) -> Tensor:
    """Bonferroni: reject hypothesis ``i`` of ``m`` when ``p_i <= alpha / m``.

    Args:
        p_values: one p-value per hypothesis (any shape; ``m = p_values.numel()``).
        alpha: the family-wise error rate, in (0, 1).

    Returns:
        A bool tensor of the shape of ``p_values``: ``True`` where the hypothesis is rejected.

    Raises:
        RobustsegError: if ``alpha`` is outside (0, 1).
    """
    alpha = _alpha(alpha)
    return p_values <= alpha / max(p_values.numel(), 1)


def holm(p_values: Tensor, alpha: float) -> Tensor:
    """Holm's step-down procedure (Holm 1979, "A simple sequentially rejective multiple test procedure").

    Sort the ``m`` p-values ``p_(1) <= ... <= p_(m)``; with ``j*`` the first (1-based) index where
    ``p_(j) > alpha / (m - j + 1)``, reject the hypotheses of ``p_(1), ..., p_(j*-1)`` (all of them if there is no
    such ``j``). Controls the family-wise error at ``alpha`` under any dependence.

    Args:
        p_values: one p-value per hypothesis (any shape; ``m = p_values.numel()``).
        alpha: the family-wise error rate, in (0, 1).

    Returns:
        A bool tensor of the shape of ``p_values``: ``True`` where the hypothesis is rejected.

    Raises:
        RobustsegError: if ``alpha`` is outside (0, 1).
    """
    alpha = _alpha(alpha)
    flat = p_values.reshape(-1)
    m = flat.numel()
    order = torch.sort(flat, stable=True).indices
    thresholds = alpha / torch.arange(m, 0, -1, dtype=torch.float64, device=flat.device)
    above = flat[order].double() > thresholds
    first = int(above.to(torch.uint8).argmax()) if bool(above.any()) else m
    rejected = torch.zeros(m, dtype=torch.bool, device=flat.device)
    rejected[order[:first]] = True
    return rejected.reshape(p_values.shape)


CORRECTIONS = {"holm": holm, "bonferroni": bonferroni}
"""The family-wise error corrections a certificate can use; ``holm`` is SegCertify's."""


def reject(p_values: Tensor, alpha: float, correction: str = "holm") -> Tensor:
    """The hypotheses rejected by ``correction`` (a name of :data:`CORRECTIONS`) at family-wise error ``alpha``."""
    return CORRECTIONS[look_up_option("correction", correction, CORRECTIONS)](p_values, alpha)
