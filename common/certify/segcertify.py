"""SegCertify's CERTIFY (Fischer, Baader & Vechev, ICML 2021, "Scalable Certified Segmentation via Randomized
Smoothing", Algorithm 1): per-voxel certificates of the Gaussian-smoothed segmenter with multiple-testing control.

For each volume:

1. ``n0`` selection samples pick, per voxel, the class ``c_hat`` the base network gives most often under noise;
2. ``n`` fresh estimation samples count how often it gives ``c_hat`` (``k`` per voxel);
3. per voxel, the exact one-sided binomial test of ``H0: P(f(x + delta) = c_hat) <= tau`` (p-value ``P(X >= k)``,
   :func:`~common.certify.bounds.binomial_p_values`), corrected over the ``N`` voxels of the volume so that the
   probability of *any* wrong claim is at most ``alpha`` (:mod:`common.certify.multiple_testing`);
4. a voxel whose hypothesis is rejected is certified: the smoothed segmenter's class there is ``c_hat`` for every
   input perturbation of L2 norm below its radius (Cohen et al. 2019, Theorem 1: ``R = sigma Phi^-1(p_lower)`` when
   ``p_lower > 1/2`` bounds the top class's probability from below); every other voxel abstains (label -1).

Radii. With ``correction="holm"`` (SegCertify's choice, Algorithm 1 line 7) a rejection says ``p > tau`` and nothing
more, so every certified voxel gets SegCertify's one radius ``sigma Phi^-1(tau)``. With ``correction="bonferroni"``
each voxel's one-sided Clopper-Pearson bound at level ``alpha / N`` holds for all voxels at once, so each certified
voxel gets its own radius ``sigma Phi^-1(p_lower)`` (SegCertify's ``certify_naiveMulti``; Bonferroni certifies no
voxel that Holm does not, but may give larger radii). By the duality of the two (:mod:`common.certify.bounds`), a
Bonferroni voxel is certified exactly when ``p_lower >= tau``.

Certificates at a larger radius ``r`` (:meth:`Certificate.certified_at`) repeat step 3 on the same counts with
``tau_r = max(tau, Phi(r / sigma))``, the smallest probability that certifies ``r`` -- what SegCertify does when it
reports a radius by choosing ``tau``. Each radius is then its own claim with family-wise error ``alpha`` (not all
radii jointly). For Bonferroni this is exactly ``radius >= r``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.stats import norm
from torch import Tensor

from common.certify.bounds import binomial_p_values, clopper_pearson_lower
from common.certify.multiple_testing import CORRECTIONS, reject
from common.certify.smoothing import GaussianSmoothing
from common.data.labels import BRATS_LABELS, channel_argmax, indices_to_labels
from common.errors import RobustsegError
from common.utils.validation import check_int, check_number, look_up_option

__all__ = ["ABSTAIN", "Certificate", "certify"]

ABSTAIN = -1
"""The class index and label value of a voxel the certificate abstains on."""


@dataclass(frozen=True)
class Certificate:
    """Per-voxel certificates of the smoothed segmenter for a batch of volumes (:func:`certify`).

    Attributes:
        selected: ``c_hat``, the class index chosen by the selection samples, ``(B, 1, *spatial)`` long.
        top_counts: how many of the ``n`` estimation samples gave ``c_hat``, ``(B, 1, *spatial)`` int.
        certified: whether the voxel is certified at the base threshold ``tau``, ``(B, 1, *spatial)`` bool.
        p_lower: the lower confidence bound on ``P(f(x + delta) = c_hat)`` that the certificate uses, float64:
            Bonferroni: the Clopper-Pearson bound at ``alpha / N`` (every voxel); Holm: ``tau`` on certified voxels,
            NaN elsewhere (Holm decides, it gives no bound where it does not reject).
        radius: the certified L2 radius ``sigma Phi^-1(p_lower)`` of certified voxels, NaN where abstained.
        sigma: the smoothing noise level.
        n0: the number of selection samples.
        n: the number of estimation samples.
        alpha: the family-wise error per volume.
        tau: the base threshold (>= 0.5).
        correction: ``"holm"`` or ``"bonferroni"``.
    """

    selected: Tensor
    top_counts: Tensor
    certified: Tensor
    p_lower: Tensor
    radius: Tensor
    sigma: float
    n0: int
    n: int
    alpha: float
    tau: float
    correction: str

    @property
    def classes(self) -> Tensor:
        """``c_hat`` where certified, :data:`ABSTAIN` elsewhere, ``(B, 1, *spatial)`` long."""
        return torch.where(self.certified, self.selected, torch.full_like(self.selected, ABSTAIN))

    def labels(self, values: tuple[int, ...] = BRATS_LABELS) -> Tensor:
        """The certified BraTS label map: ``values[c_hat]`` where certified, :data:`ABSTAIN` elsewhere."""
        labels = indices_to_labels(self.selected, values)
        return torch.where(self.certified, labels, torch.full_like(labels, ABSTAIN))

    def threshold(self, radius: float) -> float:
        """``tau_r = max(tau, Phi(radius / sigma))``: the probability bound that certifies ``radius``."""
        radius = check_number("radius", radius, minimum=0, hint="an L2 radius in input units")
        return max(self.tau, float(norm.cdf(radius / self.sigma)))

    def certified_at(self, radius: float) -> Tensor:
        """Which voxels are certified with a radius of at least ``radius``, ``(B, 1, *spatial)`` bool.

        The test of step 3 rerun per volume at ``tau_r`` (:meth:`threshold`) with the same counts and correction:
        family-wise error ``alpha`` per volume for this radius.

        Raises:
            RobustsegError: if ``radius`` is negative or not finite.
        """
        tau_r = self.threshold(radius)
        if tau_r >= 1.0:  # Phi(r / sigma) rounds to 1: no finite sample certifies it
            return torch.zeros_like(self.certified)
        return torch.stack([reject(binomial_p_values(k, self.n, tau_r), self.alpha, self.correction)
                            for k in self.top_counts])  # fmt: skip

    def abstain_fraction(self, radius: float = 0.0) -> Tensor:
        """Per volume, the fraction of voxels not certified at ``radius``, ``(B,)`` float."""
        return 1.0 - self.certified_at(radius).flatten(1).double().mean(1)


def _check_settings(n0: object, n: object, alpha: object, tau: object, correction: object) -> tuple:
    return (
        check_int("n0", n0, minimum=1, hint="the number of selection samples"),
        check_int("n", n, minimum=1, hint="the number of estimation samples"),
        check_number("alpha", alpha, 0, 1, min_inclusive=False, max_inclusive=False, hint="the family-wise error"),
        check_number("tau", tau, 0.5, 1, max_inclusive=False, hint="the certification threshold"),
        look_up_option("correction", correction, CORRECTIONS),
    )


def certify(
    smoothing: GaussianSmoothing,
    images: Tensor,
    n0: int = 10,
    n: int = 100,
    alpha: float = 0.001,
    tau: float = 0.75,
    correction: str = "holm",
    seed: int = 0,
) -> Certificate:
    """SegCertify's CERTIFY (Fischer et al. 2021, Algorithm 1) for a batch of volumes.

    Args:
        smoothing: the smoothed network (its ``sigma`` and batch of noisy copies).
        images: the inputs ``(B, C_in, *spatial)``.
        n0: selection samples per volume (SegCertify's ``n_0``), >= 1.
        n: estimation samples per volume, >= 1.
        alpha: the family-wise error per volume, in (0, 1): the probability that any certified voxel of a volume is
            wrong.
        tau: the threshold in [0.5, 1): a voxel is certified when ``P(f(x + delta) = c_hat) > tau`` is shown; its
            radius is then at least ``sigma Phi^-1(tau)`` (0 at ``tau = 0.5``).
        correction: ``"holm"`` (SegCertify's; default) or ``"bonferroni"`` (per-voxel radii; see the module).
        seed: seeds the noise (a ``torch.Generator`` on the images' device): the same seed, the same certificate.

    Returns:
        The :class:`Certificate`.

    Raises:
        RobustsegError: if ``n0`` or ``n`` is not an integer >= 1, ``alpha`` is outside (0, 1), ``tau`` is outside
            [0.5, 1), ``correction`` is unknown or ``seed`` is not an integer.

    Example::

        certificate = certify(GaussianSmoothing(network, sigma=0.25), images, n0=10, n=100, alpha=0.001)
        labels = certificate.labels()            # BraTS labels, -1 where abstained
        robust = certificate.certified_at(0.1)   # voxels certified at L2 radius 0.1
    """
    if not isinstance(smoothing, GaussianSmoothing):
        raise RobustsegError(f"smoothing must be a GaussianSmoothing, got {type(smoothing).__name__}.")
    n0, n, alpha, tau, correction = _check_settings(n0, n, alpha, tau, correction)
    seed = check_int("seed", seed)
    generator = torch.Generator(device=images.device).manual_seed(seed)
    selected = channel_argmax(smoothing.counts(images, n0, generator))  # ties go to the first class
    top_counts = smoothing.counts(images, n, generator).gather(1, selected)
    certified = torch.stack([reject(binomial_p_values(k, n, tau), alpha, correction) for k in top_counts])
    if correction == "bonferroni":
        voxels = top_counts[0].numel()
        p_lower = clopper_pearson_lower(top_counts, n, alpha / voxels)
    else:
        p_lower = torch.where(certified, tau, float("nan")).double()
    radius = torch.full_like(p_lower, float("nan"))
    bound = p_lower[certified].cpu().numpy()
    radius[certified] = torch.as_tensor(smoothing.sigma * norm.ppf(bound), dtype=torch.float64, device=radius.device)
    return Certificate(selected, top_counts, certified, p_lower, radius, smoothing.sigma, n0, n, alpha, tau, correction)
