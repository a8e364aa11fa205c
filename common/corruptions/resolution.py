"""Resolution corruptions: isotropic Gaussian blur and anisotropic (thick-slice) down-and-up sampling.

Both are deterministic and keep intensities inside the clean range up to rounding (they average neighbours); the
registry still clips, so the contract is the same for every corruption.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch.nn.functional as F
from monai.transforms import GaussianSmooth
from torch import Tensor

from common.corruptions.base import plain

__all__ = ["blur", "downsample"]


def blur(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Isotropic Gaussian blur of standard deviation ``sigma`` voxels, per channel (MONAI GaussianSmooth, erf kernel).

    A defocused or over-filtered reconstruction. Zero padding at the border (MONAI's default), which for a
    skull-stripped BraTS volume is the background. Deterministic (``seed`` is not used).

    Args:
        image: ``(C, *spatial)``.
        params: ``sigma`` in voxels.
        seed: unused.

    Returns:
        The blurred image.
    """
    return plain(GaussianSmooth(sigma=params["sigma"])(image)).to(image)


def downsample(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Thick slices: average ``factor`` slices along the last spatial axis into one, then interpolate back linearly.

    Models a scan acquired with ``factor`` times thicker slices (the usual 5 mm clinical FLAIR against BraTS' 1 mm)
    and resampled to the grid the network expects: ``area`` pooling down to ``round(n / factor)`` slices (a slice
    integrates its thickness; a non-integer factor pools adaptively), then linear interpolation back to ``n``
    (``align_corners=False``). The in-plane axes are untouched. Deterministic (``seed`` is not used).

    Args:
        image: ``(C, *spatial)``.
        params: ``factor`` (> 1), the slice thickness over the voxel size.
        seed: unused.

    Returns:
        The resampled image, same shape.
    """
    spatial = image.shape[1:]
    thick = (*spatial[:-1], max(1, round(spatial[-1] / params["factor"])))
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    low = F.interpolate(image[None], size=thick, mode="area")
    return F.interpolate(low, size=tuple(spatial), mode=mode, align_corners=False)[0]
