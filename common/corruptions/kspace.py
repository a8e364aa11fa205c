"""Acquisition (k-space) corruptions: Gibbs ringing, a k-space spike, ghosting and rigid motion.

Gibbs ringing and the spike are MONAI's :class:`~monai.transforms.GibbsNoise` and
:class:`~monai.transforms.KSpaceSpikeNoise`; MONAI has no ghosting or motion transform, so those two are TorchIO's
deterministic :class:`~torchio.Ghosting` and :class:`~torchio.Motion` (Pérez-García, Sparks and Ourselin, "TorchIO: a
Python library for efficient loading, preprocessing, augmentation and patch-based sampling of medical images in deep
learning", Comput. Methods Programs Biomed. 208, 106236, 2021; the motion model is Shaw et al., "MRI k-space motion
artefact augmentation: model robustness and task-specific uncertainty", MIDL 2019), with the randomness TorchIO's
``RandomMotion`` would draw from torch's global generator drawn instead from ``numpy.random.default_rng(seed)``.
TorchIO is imported inside the two functions, so ``import common`` does not load it. k-space is
``fftshift(fftn(x))`` over the spatial axes (MONAI's and TorchIO's), centre at index ``n // 2``; the image is the real
part of the inverse transform.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from monai.transforms import GibbsNoise, KSpaceSpikeNoise
from torch import Tensor

from common.corruptions.base import channel_ranges, plain
from common.utils.validation import check_int, check_number

__all__ = ["ghosting", "gibbs", "kspace_spike", "motion", "motion_parameters"]

_INTERPOLATION = "linear"  # of the moved poses; "bspline" gives the same PSNR, 4-6 times slower at 128^3
_PERTURBATION = 0.1  # time jitter, a share of the step between movements (RandomMotion.get_params's perturbation)


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


def _as_volume(image: Tensor) -> Tensor:
    """``(C, H, W, D)`` as it is, ``(C, H, W)`` as ``(C, 1, H, W)``: float32 on the CPU, for TorchIO.

    TorchIO's images are ``(C, W, H, D)`` and it stores a 2D image with a trailing singleton (``(C, W, H, 1)``), but
    its :class:`~torchio.Motion` interleaves the poses' k-spaces along the last axis, which would then hold one plane,
    all from the original pose: no artifact at all (PSNR 148 dB). A leading singleton keeps a 2D slice's own last axis
    as the phase-encoding one. TorchIO works in NumPy and SimpleITK (CPU, ``float32`` results), so the image goes
    there too.
    """
    volume = image.detach().to(device="cpu", dtype=torch.float32)
    return volume[:, None] if image.ndim == 3 else volume


def _apply_torchio(transform: Any, image: Tensor) -> Tensor:
    """``transform`` on ``image`` as a :class:`~torchio.ScalarImage` with an identity affine (distances in voxels)."""
    import torchio as tio  # lazily: ``import common`` stays as fast as without TorchIO

    volume = _as_volume(image)
    # Transform.__call__ draws torch.rand(1) from the global generator (for its probability, 1 here): keep that
    # draw from shifting every later torch random number of the caller
    with torch.random.fork_rng(devices=[]):
        out = transform(tio.ScalarImage(tensor=volume, affine=np.eye(4))).data
    return (out[:, 0] if image.ndim == 3 else out).to(image)


def motion_parameters(params: Mapping[str, Any], seed: int, spatial_dims: int) -> dict[str, np.ndarray]:
    """The movements of one :func:`motion` call, drawn from ``numpy.random.default_rng(seed)``.

    After TorchIO's ``RandomMotion.get_params``, with a seeded NumPy generator in place of torch's global one. Each of
    the ``movements`` rigid movements has a rotation of ``degrees`` (the length of its vector of Euler angles) and a
    shift of ``translation`` voxels, each in a direction drawn uniformly on the sphere (on the circle of the slice's
    plane in 2D, where the rotation is about the slice's normal); the movements happen at the times
    ``k / (movements + 1)``, ``k = 1 .. movements``, of the acquisition, each moved by up to 10 % of that step.

    Two departures from ``RandomMotion``, both so that severity and not the draw sets how strong the artifact is (on
    the synthetic subjects of ``tests/corruptions``, 12 seeds per level at 32^3): its angles and shifts are uniform in
    ``[-d, d]`` per axis, which spreads one level's PSNR over 5-8 dB (levels are 2-6 dB apart), a fixed size in a
    random direction over 2.5-5 dB; and its time jitter is 30 % of the step, which moves the boundary of the original
    pose's k-space segment, next to the k-space centre, far enough to swap neighbouring levels.

    Args:
        params: ``movements`` (an integer >= 1), ``degrees`` (>= 0) and ``translation`` (>= 0, voxels).
        seed: an integer >= 0.
        spatial_dims: 2 or 3.

    Returns:
        ``degrees`` and ``translation`` (``(movements, 3)`` arrays, one row per movement) and ``times``
        (``(movements,)``, increasing, in (0, 1)): TorchIO :class:`~torchio.Motion`'s arguments for the
        ``(C, 1, H, W)`` (2D) or ``(C, H, W, D)`` volume.

    Raises:
        RobustsegError: naming the parameter for a count, angle, distance, seed or ``spatial_dims`` out of range.
    """
    movements = check_int("movements", params["movements"], 1)
    size_degrees = check_number("degrees", params["degrees"], 0)
    size_translation = check_number("translation", params["translation"], 0)
    check_int("seed", seed, 0)
    check_int("spatial_dims", spatial_dims, 2, 3)
    rng = np.random.default_rng(seed)
    rotation_axis = rng.standard_normal((movements, 3))
    shift_direction = rng.standard_normal((movements, 3))
    if spatial_dims == 2:  # the slice is TorchIO's (1, H, W): rotate about the first axis, shift within (H, W)
        rotation_axis[:, 1:] = 0
        shift_direction[:, 0] = 0
    degrees = size_degrees * rotation_axis / np.linalg.norm(rotation_axis, axis=1, keepdims=True)
    translation = size_translation * shift_direction / np.linalg.norm(shift_direction, axis=1, keepdims=True)
    step = 1 / (movements + 1)
    jitter = _PERTURBATION * step
    times = step * np.arange(1, movements + 1) + rng.uniform(-jitter, jitter, size=movements)
    return {"degrees": degrees, "translation": translation, "times": times}


def ghosting(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Ghosts along the first spatial axis: TorchIO's :class:`~torchio.Ghosting` (Pérez-García et al., CMPB 2021).

    Periodic signal changes between phase-encoding lines (pulsation, respiration): every ``num_ghosts``-th k-space
    plane along the phase-encoding axis is scaled by ``1 - intensity``, only the central plane restored
    (``restore=None``), so each channel's mean is kept and the image gets faint copies of itself shifted by multiples
    of ``n / num_ghosts`` voxels. TorchIO's ``RandomGhosting`` draws the axis, the count and the intensity; here the
    severity fixes the count and intensity and the axis is the first spatial one, so the result is deterministic
    (``seed`` is not used). Computed in ``float32`` on the CPU (TorchIO's FFT), returned in ``image``'s dtype and
    device.

    Args:
        image: ``(C, *spatial)``.
        params: ``num_ghosts`` (an integer >= 2, the period of the modulated planes) and ``intensity`` in [0, 1].
        seed: unused.

    Returns:
        The ghosted image.
    """
    import torchio as tio

    axis = 0 if image.ndim == 4 else 1  # the input's first spatial axis in TorchIO's (C, 1, H, W) for a 2D slice
    return _apply_torchio(
        tio.Ghosting(num_ghosts=params["num_ghosts"], axis=axis, intensity=params["intensity"], restore=None), image
    )


def motion(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Rigid head motion during the scan: TorchIO's :class:`~torchio.Motion` (Pérez-García et al., CMPB 2021).

    TorchIO's model of Shaw et al. (MIDL 2019): the head takes ``movements + 1`` poses during the acquisition, each
    resampled (SimpleITK, linear, the channel minimum outside), and the k-space is filled in segments along the last
    spatial axis, each from one pose; the segment holding the k-space centre comes from the original pose, so the
    anatomy stays where it was and the inconsistent outer k-space gives the ghosting and blurring of real motion.
    The movements (:func:`motion_parameters`) are drawn from ``seed``; severity sets their number, angle and shift.
    The registry's levels double the size and add movements, in even numbers: an odd number puts a movement at
    mid-acquisition, a segment boundary next to the k-space centre, far more severe than its neighbours. Past about
    1 degree and 0.5 voxel the moved segments no longer match the original pose at all and PSNR stops falling with
    size (at 128^3); only more movements, which narrow the original pose's central segment, lower it further.
    Distances are in voxels (identity affine). Computed in ``float32`` on the CPU, returned in ``image``'s dtype and
    device.

    Args:
        image: ``(C, *spatial)``.
        params: ``movements`` (an integer >= 1), ``degrees`` (each movement's rotation) and ``translation`` (each
            movement's shift, voxels).
        seed: seeds the movements' angles, shifts and times.

    Returns:
        The image with motion artifacts.
    """
    import torchio as tio

    drawn = motion_parameters(params, seed, image.ndim - 1)
    return _apply_torchio(tio.Motion(**drawn, image_interpolation=_INTERPOLATION), image)
