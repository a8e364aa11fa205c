"""Uniform-noise augmentation of Liu et al. (2021, "Results"): L-infinity ball of radius 0.01, relative like epsilon.

The paper compares its defences with "uniform perturbations of radius of 0.01 in infinity norm" added to the
training inputs. Here the noise follows the same threat model as the attacks (:mod:`common.attacks`): the radius is
a fraction of each sample's maximum absolute intensity (over all channels) by default, and the result is clipped to
the sample's clean ``[min, max]`` so that noisy and adversarial inputs live in the same valid range. On the
per-volume [0, 1] normalised inputs of the bundles this is noise of +-0.01 clipped to [0, 1].

Three forms: :func:`uniform_noise` for a batch (used by :class:`~common.defenses.NoiseAugmentationStep`), and the
MONAI transforms :class:`RandUniformNoise` (array, (C, *spatial)) and :class:`RandUniformNoised` (dictionary).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data.meta_obj import get_track_meta
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor
from torch import Tensor

from common.attacks.base import check_linf_radius
from common.errors import RobustsegError
from common.utils.validation import check_number

__all__ = ["RandUniformNoise", "RandUniformNoised", "uniform_noise"]


def _check_radius(radius: float, relative: bool) -> float:
    return check_linf_radius(radius, relative, "radius")


def _check_prob(prob: float) -> float:
    return check_number("prob", prob, 0.0, 1.0)


def _add_noise(images: Tensor, unit_noise: Tensor, radius: float, relative: bool, clip: bool) -> Tensor:
    """``images`` (B, ...) plus ``radius * unit_noise`` (values in [-1, 1]) per sample, optionally clipped."""
    dims = tuple(range(1, images.ndim))
    scale = images.abs().amax(dim=dims, keepdim=True) if relative else 1.0
    noisy = images + (radius * scale) * unit_noise.to(images)
    if clip:
        noisy = torch.clamp(noisy, images.amin(dim=dims, keepdim=True), images.amax(dim=dims, keepdim=True))
    return noisy


def uniform_noise(
    images: Tensor,
    radius: float = 0.01,
    relative: bool = True,
    clip: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A noisy copy of a batch: independent uniform noise in ``[-r, r]`` on every voxel (the paper's augmentation).

    Args:
        images: a batch (B, C, *spatial), floating point; not modified.
        radius: the L-infinity radius ``r``, >= 0; a fraction of each sample's maximum absolute intensity (over all
            channels and voxels) when ``relative`` (so <= 1), else in intensity units. The paper uses 0.01.
        relative: whether ``radius`` is relative to each sample's maximum absolute intensity.
        clip: clip each sample to its clean ``[min, max]`` (like the attacks' default ``clip="sample"``); the
            result stays within ``r`` of the clean images either way.
        generator: a ``torch.Generator`` on the images' device for reproducible noise; the global torch RNG
            otherwise.

    Returns:
        The noisy batch, detached, with the shape, dtype and device of ``images``.

    Raises:
        RobustsegError: if ``radius`` is negative, not finite, or > 1 with ``relative``, or ``images`` is not a
            floating-point tensor with a batch dimension.
    """
    radius = _check_radius(radius, relative)
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.ndim < 2:
        what = f"{images.dtype} tensor of shape {tuple(images.shape)}" if isinstance(images, Tensor) else type(images)
        raise RobustsegError(f"images must be a floating-point tensor (B, C, *spatial), got a {what}.")
    images = images.detach()
    unit = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype) * 2 - 1
    return _add_noise(images, unit, radius, relative, clip)


class RandUniformNoise(RandomizableTransform):
    """Add uniform noise in an L-infinity ball to an image (C, *spatial): the paper's noise augmentation.

    Each voxel gets independent noise from ``U(-r, r)``, with ``r = radius * max|image|`` when ``relative``; the result
    is clipped to the image's clean ``[min, max]`` when ``clip`` (see :func:`uniform_noise`). The noise is drawn from
    this transform's ``R`` (numpy), so :meth:`set_random_state` makes it reproducible, as for any MONAI transform.

    Args:
        radius: the L-infinity radius (the paper's 0.01), relative to the image maximum when ``relative``.
        relative: whether ``radius`` is a fraction of the image's maximum absolute intensity (over all channels).
        prob: probability of adding noise to an image.
        clip: clip the result to the image's clean ``[min, max]``.

    Raises:
        RobustsegError: if ``radius`` < 0 (or > 1 with ``relative``) or ``prob`` is outside [0, 1].

    Example::

        noise = RandUniformNoise(radius=0.01, prob=1.0).set_random_state(seed=0)
        noisy = noise(image)   # image (4, H, W, D)
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, radius: float = 0.01, relative: bool = True, prob: float = 1.0, clip: bool = True) -> None:
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.relative = bool(relative)
        self.radius = _check_radius(radius, self.relative)
        self.clip = bool(clip)
        self.noise: np.ndarray | None = None

    def randomize(self, img: NdarrayOrTensor) -> None:
        super().randomize(None)
        if not self._do_transform:
            return
        # float32 halves the memory of numpy's float64 draw; the noise is scaled per image in __call__
        self.noise = self.R.uniform(-1.0, 1.0, size=tuple(img.shape)).astype(np.float32)

    def __call__(self, img: NdarrayOrTensor, randomize: bool = True) -> NdarrayOrTensor:
        """Apply the transform to ``img`` (C, *spatial); a tensor comes back (a MetaTensor when meta is tracked)."""
        img = convert_to_tensor(img, track_meta=get_track_meta())
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        if self.noise is None or tuple(self.noise.shape) != tuple(img.shape):
            raise RuntimeError("call randomize() with an image of this shape first.")
        if not img.is_floating_point():
            raise RobustsegError(f"RandUniformNoise needs a floating-point image, got {img.dtype}.")
        noise, *_ = convert_to_dst_type(self.noise, img)
        return _add_noise(img[None], noise[None], self.radius, self.relative, self.clip)[0]


class RandUniformNoised(RandomizableTransform, MapTransform):
    """Dictionary version of :class:`RandUniformNoise`.

    As MONAI's ``RandGaussianNoised``, all ``keys`` share one draw (they must have the same shape); the scale and
    clipping range are those of each key's own image.

    Args:
        keys: keys of the images to perturb, e.g. ``"image"``.
        radius: the L-infinity radius (the paper's 0.01), relative to each image's maximum when ``relative``.
        relative: whether ``radius`` is a fraction of the image's maximum absolute intensity.
        prob: probability of perturbing a sample.
        clip: clip each result to its image's clean ``[min, max]``.
        allow_missing_keys: do not raise if a key is missing.

    Raises:
        RobustsegError: if ``radius`` < 0 (or > 1 with ``relative``) or ``prob`` is outside [0, 1].

    Example::

        {"_target_": "common.defenses.RandUniformNoised", "keys": "image", "radius": 0.01, "prob": 1.0}
    """

    backend = RandUniformNoise.backend

    def __init__(
        self,
        keys: KeysCollection,
        radius: float = 0.01,
        relative: bool = True,
        prob: float = 1.0,
        clip: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, _check_prob(prob))
        self.rand_uniform_noise = RandUniformNoise(radius=radius, relative=relative, prob=1.0, clip=clip)

    def set_random_state(
        self, seed: int | None = None, state: np.random.RandomState | None = None
    ) -> RandUniformNoised:
        super().set_random_state(seed, state)
        self.rand_uniform_noise.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize(None)
        first_key: Hashable = self.first_key(d)
        if not self._do_transform or first_key == ():
            for key in self.key_iterator(d):
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta())
            return d
        self.rand_uniform_noise.randomize(d[first_key])
        for key in self.key_iterator(d):
            d[key] = self.rand_uniform_noise(d[key], randomize=False)
        return d
