"""Acquisition (k-space) corruptions: Gibbs ringing, a k-space spike, ghosting and rigid motion.

Gibbs ringing and the spike are MONAI's :class:`~monai.transforms.GibbsNoise` and
:class:`~monai.transforms.KSpaceSpikeNoise`. MONAI has no ghosting or motion transform (TorchIO's ``RandomGhosting``
and ``RandomMotion`` are the usual ones, and TorchIO is not a dependency); both are written here in a few lines of
torch FFT after TorchIO's models (Pérez-García et al. 2021; Shaw et al. 2019 for motion), simplified to one
deterministic phase-encoding axis: the first spatial axis. k-space is MONAI's: ``fftshift(fftn(x))`` over the spatial
axes, centre at index ``n // 2``; the image is the real part of the inverse transform.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from monai.transforms import Affine, GibbsNoise, KSpaceSpikeNoise
from monai.transforms.utils import Fourier
from torch import Tensor

from common.corruptions.base import channel_ranges, plain

__all__ = ["ghosting", "gibbs", "kspace_spike", "motion"]


def gibbs(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Gibbs ringing: k-space truncated to a ball of radius ``(1 - alpha) * sqrt(2) / 2 * max(n)`` (MONAI GibbsNoise).

    The ringing of a low-resolution acquisition at sharp edges. ``alpha`` below about 0.3 keeps the whole k-space
    cube (the ball holds it) and does nothing. Deterministic (``seed`` is not used).

    Args:
        image: ``(C, *spatial)``.
        params: ``alpha`` in [0, 1].
        seed: unused.

    Returns:
        The ringing image.
    """
    return plain(GibbsNoise(alpha=params["alpha"])(image)).to(image)


def kspace_spike(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """A herringbone artifact: one k-space sample set to a large magnitude (MONAI KSpaceSpikeNoise).

    The spike lies off the centre, 1/8 to 1/4 of each edge away on a random side (both drawn from ``seed``), so the
    image gets a plane-wave stripe pattern. Its magnitude is set per channel so that the stripes' amplitude in the
    image is ``amplitude`` times the channel's intensity range: ``|k| = amplitude * range * N`` for ``N`` voxels
    (the inverse FFT divides by ``N``). The same location in every channel (one faulty acquisition).

    Args:
        image: ``(C, *spatial)``.
        params: ``amplitude``, relative to each channel's intensity range.
        seed: seeds the spike's location.

    Returns:
        The striped image.
    """
    generator = torch.Generator().manual_seed(seed)
    location = []
    for n in image.shape[1:]:
        offset = round(n * (0.125 + 0.125 * float(torch.rand((), generator=generator))))
        side = 1 if bool(torch.randint(0, 2, (), generator=generator)) else -1
        location.append(n // 2 + side * max(1, offset))
    low, high = channel_ranges(image)
    scale = params["amplitude"] * math.prod(image.shape[1:])
    intensities = [math.log(max(scale * r, 1e-30)) for r in (high - low).flatten().tolist()]
    locations = [(c, *location) for c in range(image.shape[0])]
    return plain(KSpaceSpikeNoise(loc=locations, k_intensity=intensities)(image)).to(image)


def ghosting(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Ghosts along the phase-encoding axis: every ``period``-th k-space plane scaled by ``1 - intensity``.

    TorchIO's ``RandomGhosting`` model (periodic signal changes between phase-encoding lines, e.g. pulsation or
    respiration): the modulation is a comb in k-space, so the image gets ``period - 1`` faint shifted copies of
    itself, ``n / period`` voxels apart along the first spatial axis. The centre plane is kept, so each channel's mean
    is unchanged. Deterministic (``seed`` is not used).

    Args:
        image: ``(C, *spatial)``.
        params: ``period`` (an integer >= 2) and ``intensity`` in [0, 1].
        seed: unused.

    Returns:
        The ghosted image.
    """
    n_dims = image.ndim - 1
    size = image.shape[1]
    factor = torch.ones(size, dtype=image.dtype, device=image.device)
    factor[:: params["period"]] = 1 - params["intensity"]
    factor[size // 2] = 1
    k = Fourier.shift_fourier(image, n_dims) * factor.reshape(-1, *([1] * (n_dims - 1)))
    return Fourier.inv_shift_fourier(k, n_dims).to(image)


def motion(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Rigid motion during the scan: the outer k-space planes come from the moved head (after TorchIO RandomMotion).

    Centric phase encoding along the first spatial axis: the central ``1 - moved`` fraction of planes is acquired
    first, in the head's original pose, then the head moves once and the remaining outer ``moved`` fraction is
    acquired in the new pose (MONAI :class:`~monai.transforms.Affine`, bilinear, zero padding about the channel
    minimum). The inconsistent k-space gives the blurring and ghosting of real motion. The pose is a rotation of
    ``degrees / sqrt(3)`` about each axis in turn (``degrees`` in 2D) and a shift of ``translation / sqrt(d)``
    voxels along each of the ``d`` axes, every one with a random sign: the draw picks the signs, severity the sizes.

    Args:
        image: ``(C, *spatial)``.
        params: ``degrees``, ``translation`` (voxels) and ``moved`` (fraction of k-space planes in the new pose).
        seed: seeds the signs of the rotations and shifts.

    Returns:
        The image with motion artifacts.
    """
    generator = torch.Generator().manual_seed(seed)
    n_dims = image.ndim - 1
    angle = math.radians(params["degrees"])
    # random signs, fixed sizes: a random direction would make the severity depend on the draw (a translation along
    # the phase-encoding axis costs more than across it)
    n_angles = 3 if n_dims == 3 else 1
    signs = (torch.randint(0, 2, (n_angles + n_dims,), generator=generator) * 2 - 1).tolist()
    rotation = [angle * sign / math.sqrt(n_angles) for sign in signs[:n_angles]]
    shift = [params["translation"] * sign / math.sqrt(n_dims) for sign in signs[n_angles : n_angles + n_dims]]
    low, _ = channel_ranges(image)
    moved_pose = Affine(
        rotate_params=rotation, translate_params=shift, padding_mode="zeros", image_only=True, dtype=torch.float64
    )
    moved = low + plain(moved_pose((image - low).double())).to(image)
    size = image.shape[1]
    from_centre = (torch.arange(size, device=image.device) - size // 2).abs()
    keep = (from_centre < size * (1 - params["moved"]) / 2).reshape(-1, *([1] * (n_dims - 1)))
    k = torch.where(keep, Fourier.shift_fourier(image, n_dims), Fourier.shift_fourier(moved, n_dims))
    return Fourier.inv_shift_fourier(k, n_dims).to(image)
