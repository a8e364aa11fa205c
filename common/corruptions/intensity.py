"""Intensity corruptions: a smooth multiplicative bias field, Rician noise and a gamma (contrast) change.

Each works per channel, with intensities measured from the channel's minimum (the background of a min-max or
z-scored BraTS volume), so a multiplicative field or magnitude noise acts on the signal and not on the offset that
the normalisation happened to give the background.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from monai.transforms import AdjustContrast, RandBiasField, RandRicianNoise
from torch import Tensor

from common.corruptions.base import channel_ranges, plain

__all__ = ["bias_field", "gamma", "rician_noise"]


def bias_field(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Multiply by a smooth field ``exp(b)`` whose log ``b`` is a random Legendre polynomial (Van Leemput et al. 1999).

    MONAI's :class:`~monai.transforms.RandBiasField` (``degree``, coefficients uniform in [-1, 1], seeded) draws the
    shape of ``b``; its strength is then fixed, so that severity, not the draw, sets how strong it is: over the head
    (the voxels where any channel is above its minimum; the whole image if none is) ``b`` is centred (geometric-mean
    gain 1) and scaled to standard deviation ``log_gain_sd``. A polynomial is largest in the corners of its cube,
    outside the head, which is why the head, not the maximum, sets the scale. One field for all channels (one
    receive coil), as in MONAI.

    Args:
        image: ``(C, *spatial)``.
        params: ``degree`` (of the polynomial) and ``log_gain_sd`` (> 0).
        seed: seeds the polynomial's coefficients.

    Returns:
        ``min_c + (image - min_c) * exp(b)``, per channel ``c``.
    """
    transform = RandBiasField(degree=params["degree"], coeff_range=(-1.0, 1.0), prob=1.0, dtype=None)
    transform.set_random_state(seed=seed)
    ones = torch.ones((1, *image.shape[1:]), dtype=torch.float64)
    log_field = torch.log(plain(transform(ones)))[0].to(image.device)
    low, _ = channel_ranges(image)
    head = (image > low).any(dim=0)
    inside = log_field[head] if bool(head.any()) else log_field.flatten()
    log_field = (log_field - inside.mean()) * (params["log_gain_sd"] / inside.std().clamp_min(1e-12))
    return low + (image - low) * torch.exp(log_field).to(image)


def rician_noise(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Rician noise of a magnitude image: ``sqrt((x + n1)^2 + n2^2)``, ``n1, n2 ~ N(0, s^2)`` (Gudbjartsson 1995).

    MONAI's :class:`~monai.transforms.RandRicianNoise` (channel-wise, seeded), with ``x`` the intensity above the
    channel's minimum and ``s = std * (max - min)`` of that channel, so a level means the same on every contrast and
    every normalisation. The background's noise is Rayleigh, brightening it as in real magnitude images.

    Args:
        image: ``(C, *spatial)``.
        params: ``std``, relative to each channel's intensity range.
        seed: seeds the noise.

    Returns:
        The noisy image, shifted back by the channel minimum.
    """
    low, high = channel_ranges(image)
    stds = (params["std"] * (high - low).flatten()).tolist()
    transform = RandRicianNoise(
        prob=1.0, mean=0.0, std=stds, channel_wise=True, relative=False, sample_std=False, dtype=None
    )
    transform.set_random_state(seed=seed)
    # the transform writes its channels in place, so it gets a fresh tensor
    return low + plain(transform(image - low)).to(image)


def gamma(image: Tensor, params: Mapping[str, Any], seed: int) -> Tensor:
    """Gamma contrast change per channel: ``x = ((x - min) / range) ** gamma * range + min`` (MONAI AdjustContrast).

    ``gamma > 1`` darkens the mid-tones, as a changed window or sequence weighting would; the channel's minimum and
    maximum stay put. Deterministic (``seed`` is not used).

    Args:
        image: ``(C, *spatial)``.
        params: ``gamma``.
        seed: unused.

    Returns:
        The re-contrasted image.
    """
    transform = AdjustContrast(gamma=params["gamma"])
    return torch.cat([plain(transform(channel[None])).to(image) for channel in image])
