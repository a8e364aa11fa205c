"""How visible a perturbation is: PSNR, SSIM and RMSE of the adversarial input against the clean one, and its norms.

The paper (Liu et al. 2021, "Measuring Robustness" and Table 1) reports PSNR, SSIM and RMSE of each perturbed input
image against the unperturbed one. Every function here takes ``(clean, adversarial)`` image batches of shape
``(B, C, *spatial)`` (2 or 3 spatial dimensions) and returns one value per sample, shape ``(B,)``, as float64 on the
input's device. The data range of sample ``b`` is ``clean[b].max() - clean[b].min()`` over all channels and voxels
(1 for data normalised to [0, 1]), so values are comparable across subjects whatever their intensity scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.metrics import PSNRMetric, RMSEMetric, SSIMMetric
from torch import Tensor

from common.errors import RobustsegError

__all__ = ["psnr", "ssim", "rmse", "perturbation_norms", "input_quality"]


def _check_pair(clean: Tensor, adversarial: Tensor) -> None:
    if clean.shape != adversarial.shape:
        raise RobustsegError(
            f"clean and adversarial must have the same shape, got {tuple(clean.shape)} and {tuple(adversarial.shape)}."
        )
    if clean.ndim not in (4, 5):
        raise RobustsegError(
            f"clean and adversarial must be image batches (B, C, H, W) or (B, C, H, W, D), got {tuple(clean.shape)}."
        )


def _data_ranges(clean: Tensor) -> list[float]:
    flat = clean.detach().flatten(start_dim=1).double()
    ranges = (flat.amax(dim=1) - flat.amin(dim=1)).tolist()
    constant = [b for b, r in enumerate(ranges) if not r > 0]
    if constant:
        raise RobustsegError(
            f"clean: sample(s) {constant} have zero intensity range (max == min), so PSNR/SSIM are undefined; "
            "expected non-constant images."
        )
    return ranges


def psnr(clean: Tensor, adversarial: Tensor) -> Tensor:
    """Peak signal-to-noise ratio (dB) of ``adversarial`` against ``clean``, per sample.

    ``PSNR = 20 log10(R) - 10 log10(MSE)`` with ``R`` the sample's clean data range and ``MSE`` the mean squared
    difference over all channels and voxels (MONAI's :class:`~monai.metrics.PSNRMetric`, whose ``max_val`` is this
    range). Identical inputs give ``+inf``. A uniform perturbation of +-eps on [0, 1] data gives ``20 log10(1/eps)``
    (26.02 dB for eps = 0.05).

    Args:
        clean: clean images ``(B, C, *spatial)``.
        adversarial: perturbed images of the same shape.

    Returns:
        PSNR in dB, shape ``(B,)``, float64.

    Raises:
        RobustsegError: if the shapes differ or are not image batches, or a clean sample is constant.
    """
    _check_pair(clean, adversarial)
    ranges = _data_ranges(clean)
    clean64, adv64 = clean.detach().double(), adversarial.detach().double()
    values = [
        PSNRMetric(max_val=r, reduction="none")(adv64[b : b + 1], clean64[b : b + 1]).reshape(())
        for b, r in enumerate(ranges)
    ]
    return torch.stack(values)


def rmse(clean: Tensor, adversarial: Tensor) -> Tensor:
    """Root mean squared difference of ``adversarial`` and ``clean`` over all channels and voxels, per sample.

    In the images' own (normalised) intensity units, not divided by the data range, as MONAI's
    :class:`~monai.metrics.RMSEMetric` computes it: a perturbation of +-eps everywhere gives eps.

    Args:
        clean: clean images ``(B, C, *spatial)``.
        adversarial: perturbed images of the same shape.

    Returns:
        RMSE, shape ``(B,)``, float64.

    Raises:
        RobustsegError: if the shapes differ or are not image batches.
    """
    _check_pair(clean, adversarial)
    return RMSEMetric(reduction="none")(adversarial.detach().double(), clean.detach().double()).reshape(-1)


def ssim(
    clean: Tensor,
    adversarial: Tensor,
    win_size: int = 11,
    kernel_sigma: float = 1.5,
) -> Tensor:
    """Structural similarity (Wang et al. 2004) of ``adversarial`` against ``clean``, per sample.

    MONAI's :class:`~monai.metrics.SSIMMetric` with a Gaussian window (``win_size``, ``kernel_sigma``; the usual
    11 and 1.5), ``k1 = 0.01``, ``k2 = 0.03`` and ``data_range`` = the sample's clean data range, in 2D or 3D as the
    input has 2 or 3 spatial dimensions. Multi-channel images (the four MR contrasts) are scored *per channel* -- the
    window never mixes contrasts -- and the SSIM map is averaged over the valid (unpadded) window positions and then
    over channels, i.e. the mean of the per-channel SSIMs. Identical inputs give 1.

    Args:
        clean: clean images ``(B, C, *spatial)``.
        adversarial: perturbed images of the same shape.
        win_size: edge of the Gaussian window in voxels; every spatial edge must be at least this long.
        kernel_sigma: standard deviation of the Gaussian window in voxels.

    Float32 limits it: MONAI computes it in float32 whatever the input dtype, as ``E[x^2] - E[x]^2``, so intensities
    far from zero compared with their range lose the variances to rounding (a 32^3 volume in [1000, 1001] scored 1.03
    against itself plus noise, the float64 value being 0.78). Normalised images, as in robustseg's bundles, are fine
    (within 1e-7 of float64). The evaluation's columns come from :class:`common.engines.quality.InputQuality`, which
    centres the intensities first and matches float64 at any offset.

    Returns:
        SSIM, shape ``(B,)``, float64 (MONAI computes it in float32).

    Raises:
        RobustsegError: if the shapes differ or are not image batches, a clean sample is constant, ``win_size`` is
            not a positive odd number, ``kernel_sigma`` <= 0, or a spatial edge is shorter than ``win_size``.
    """
    _check_pair(clean, adversarial)
    if win_size < 1 or win_size % 2 == 0:
        raise RobustsegError(f"win_size must be a positive odd number, got {win_size}.")
    if kernel_sigma <= 0:
        raise RobustsegError(f"kernel_sigma must be > 0, got {kernel_sigma}.")
    spatial: Sequence[int] = tuple(clean.shape[2:])
    if min(spatial) < win_size:
        raise RobustsegError(
            f"win_size: the SSIM window ({win_size}) is larger than the image's spatial shape {tuple(spatial)}; "
            "pass a smaller win_size."
        )
    ranges = _data_ranges(clean)
    clean_d, adv_d = clean.detach(), adversarial.detach()
    values = []
    for b, r in enumerate(ranges):
        metric = SSIMMetric(
            spatial_dims=len(spatial), data_range=r, win_size=win_size, kernel_sigma=kernel_sigma, reduction="none"
        )
        values.append(metric(adv_d[b : b + 1], clean_d[b : b + 1]).reshape(()).double())
    return torch.stack(values)


def perturbation_norms(clean: Tensor, adversarial: Tensor) -> tuple[Tensor, Tensor]:
    """L-inf and L2 norms of the perturbation ``adversarial - clean`` over all channels and voxels, per sample.

    In the images' intensity units (not relative to the data range): an FGSM step of eps on [0, 1] data has L-inf
    norm eps and L2 norm ``eps * sqrt(number of elements)``.

    Args:
        clean: clean images ``(B, C, *spatial)``.
        adversarial: perturbed images of the same shape.

    Returns:
        ``(linf, l2)``, each of shape ``(B,)``, float64.

    Raises:
        RobustsegError: if the shapes differ or are not image batches.
    """
    _check_pair(clean, adversarial)
    delta = (adversarial.detach().double() - clean.detach().double()).flatten(start_dim=1)
    return delta.abs().amax(dim=1), torch.linalg.vector_norm(delta, ord=2, dim=1)


def input_quality(clean: Tensor, adversarial: Tensor, win_size: int = 11) -> dict[str, Tensor]:
    """All input-quality columns of the robustness CSV at once: ``psnr``, ``ssim``, ``rmse``, ``linf``, ``l2``.

    Args:
        clean: clean images ``(B, C, *spatial)``.
        adversarial: perturbed images of the same shape.
        win_size: SSIM window edge (see :func:`ssim`).

    Returns:
        A dict from CSV column name to a float64 tensor of shape ``(B,)``.

    Raises:
        RobustsegError: as :func:`psnr` and :func:`ssim`.
    """
    linf, l2 = perturbation_norms(clean, adversarial)
    return {
        "psnr": psnr(clean, adversarial),
        "ssim": ssim(clean, adversarial, win_size=win_size),
        "rmse": rmse(clean, adversarial),
        "linf": linf,
        "l2": l2,
    }
