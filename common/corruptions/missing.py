"""A missing modality: one input channel zeroed, a growing share of its slices, the whole channel at severity 5.

A missing or failed sequence is the commonest corruption of a multi-contrast protocol; a partly failed one (slices
lost to motion or a reconstruction error) is its milder form. Severity ``s`` zeroes the fraction ``s / 5`` of the
channel's slices along the last spatial axis, in a fixed, nested order spread through the volume (slice ``i`` goes at
the level where ``frac(i * golden ratio)`` falls below the fraction): every level zeroes the slices of the levels
below it, and severity 5 removes the modality. Which channel is a property of the corruption, not of the draw
(``missing_t1``, ``missing_t1ce``, ``missing_t2``, ``missing_flair`` in :data:`~common.data.labels.MODALITIES`
order), so a row of the severity grid is one modality and the other channels are left bit-identical.
Deterministic; the zero fill is not clipped (for min-max inputs 0 is the channel minimum; for z-scored inputs it is
the background and the mean of the brain).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

__all__ = ["missing_slices", "zeroed_slices"]

_GOLDEN = (math.sqrt(5) - 1) / 2


def zeroed_slices(n: int, fraction: float) -> Tensor:
    """Boolean mask of the ``n`` slices zeroed at ``fraction`` (nested in ``fraction``; all of them at 1)."""
    order = torch.tensor([(i * _GOLDEN) % 1.0 for i in range(n)], dtype=torch.float64)
    return order < fraction if fraction < 1 else torch.ones(n, dtype=torch.bool)


def missing_slices(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Zero the fraction ``fraction`` of channel ``channel``'s slices along the last spatial axis.

    Args:
        image: ``(C, *spatial)``.
        params: ``channel`` (index) and ``fraction`` in (0, 1].
        seed: unused.

    Returns:
        The image with those slices of that channel set to 0, the other channels copied.
    """
    out = image.clone()
    mask = zeroed_slices(image.shape[-1], params["fraction"]).to(image.device)
    out[params["channel"], ..., mask] = 0
    return out
