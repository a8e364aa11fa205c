"""Gaussian-noise augmentation: the base network of randomized smoothing (Cohen et al. 2019; Fischer et al. 2021).

A smoothed segmenter ``g`` predicts, per voxel, the class its base network ``f`` gives most often under the noise
``N(0, sigma^2 I)`` (:class:`~common.certify.GaussianSmoothing`), so ``g`` is only as accurate as ``f`` is under that
noise: Cohen et al. (2019) train ``f`` with Gaussian data augmentation at the certification's ``sigma``, and
SegCertify (Fischer et al. 2021) does the same for segmentation. The ``gaussaug`` defence bundles do this with the
transforms below. Training and certifying at the same ``sigma`` is the convention, not a theorem (Pal & Sulam 2023
find other training levels sometimes better); a bundle's ``noise_sigma`` can be set apart from the certificate's.

The noise is exactly the noise the certification samples: independent, mean 0, standard deviation ``sigma`` on every
voxel of every channel, added in the network's input space and **not clipped** -- robustseg's inputs are min-max
normalised to [0, 1] per channel, so ``sigma`` is a fraction of each channel's intensity range, as it is for
:class:`~common.certify.GaussianSmoothing`, which does not clip either. The transforms are MONAI's
``RandGaussianNoise`` / ``RandGaussianNoised`` with ``mean=0`` and ``sample_std=False``: MONAI's default
``sample_std=True`` draws each image's standard deviation uniformly from ``[0, sigma]``, a weaker noise (its mean
variance is ``sigma^2 / 3``) than the one certified. ``prob`` defaults to 1.0, as in Cohen et al.: every training
input is noisy, so the network learns the very distribution it is queried on.
"""

from __future__ import annotations

from monai.config import KeysCollection
from monai.transforms import RandGaussianNoise, RandGaussianNoised

from common.utils.validation import check_number

__all__ = ["RandSmoothingNoise", "RandSmoothingNoised"]


def _check_sigma(sigma: float) -> float:
    return check_number("sigma", sigma, 0, min_inclusive=False, hint="the noise standard deviation")


def _check_prob(prob: float) -> float:
    return check_number("prob", prob, 0.0, 1.0, hint="the probability of adding noise to a sample")


class RandSmoothingNoise(RandGaussianNoise):
    """Add ``N(0, sigma^2)`` noise to every voxel of an image (C, *spatial): randomized smoothing's noise.

    MONAI's ``RandGaussianNoise`` with the standard deviation fixed at ``sigma`` (``sample_std=False``) and mean 0,
    unclipped: the noise :class:`~common.certify.GaussianSmoothing` certifies with. The noise is drawn from this
    transform's ``R`` (numpy), so :meth:`set_random_state` makes it reproducible, as for any MONAI transform; the
    output is float32.

    Args:
        sigma: the noise standard deviation, > 0, in input units (a fraction of the [0, 1] intensity range).
        prob: probability of adding noise to an image (1.0: always, as in Cohen et al. 2019).

    Raises:
        RobustsegError: if ``sigma`` is not a finite number > 0 or ``prob`` is outside [0, 1].

    Example::

        noise = RandSmoothingNoise(sigma=0.25).set_random_state(seed=0)
        noisy = noise(image)   # image (4, H, W, D); noisy - image ~ N(0, 0.25^2) per voxel
    """

    def __init__(self, sigma: float, prob: float = 1.0) -> None:
        self.sigma = _check_sigma(sigma)
        super().__init__(prob=_check_prob(prob), mean=0.0, std=self.sigma, sample_std=False)


class RandSmoothingNoised(RandGaussianNoised):
    """Dictionary version of :class:`RandSmoothingNoise`: the ``gaussaug`` bundles' augmentation.

    MONAI's ``RandGaussianNoised`` with ``mean=0`` and ``sample_std=False``; as there, all ``keys`` share one draw
    (they must have the same shape).

    Args:
        keys: keys of the images to perturb, e.g. ``"image"`` (never the label).
        sigma: the noise standard deviation, > 0, in input units (a fraction of the [0, 1] intensity range).
        prob: probability of perturbing a sample (1.0: always, as in Cohen et al. 2019).
        allow_missing_keys: do not raise if a key is missing.

    Raises:
        RobustsegError: if ``sigma`` is not a finite number > 0 or ``prob`` is outside [0, 1].

    Example::

        {"_target_": "common.defenses.RandSmoothingNoised", "keys": "image", "sigma": 0.25, "prob": 1.0}
    """

    def __init__(self, keys: KeysCollection, sigma: float, prob: float = 1.0, allow_missing_keys: bool = False) -> None:
        self.sigma = _check_sigma(sigma)
        super().__init__(
            keys, prob=_check_prob(prob), mean=0.0, std=self.sigma, allow_missing_keys=allow_missing_keys,
            sample_std=False,
        )
