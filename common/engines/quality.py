"""Input-quality columns for many perturbed versions of one clean input, with the clean side computed once.

The robustness evaluation scores every epsilon of an FGSM sweep and every iterate of i-FGSM/ti-FGSM against the
same clean image (paper Table 1 and Fig. 4: PSNR, SSIM, RMSE of the perturbed inputs). :func:`common.metrics.ssim`
(MONAI's :class:`~monai.metrics.SSIMMetric`) convolves five maps with a dense 11x11x11 Gaussian window per call:
about 1,300 multiply-adds per voxel and map, most of the evaluation's time on a CPU once the attack is done. The
Gaussian window is separable (MONAI builds it as the outer product of three 1-D Gaussians), so three 1-D passes
give the same local means; and the clean image's mean and second moment do not change between calls.
:class:`InputQuality` does both, and is tested equal to :func:`common.metrics.input_quality`.

The local means are taken in float32, of the images minus the clean image's mean intensity (SSIM's variances and
covariance do not change under a common shift, and the local means get the shift back in float64): centred, the
second moments keep float32's relative precision with respect to the data range, as they would not for intensities
far from zero (raw MR or CT). On 48^3 volumes that is about a quarter faster than float64 throughout, and the SSIM
differs from the float64 computation's by at most 1.4e-6 over the demo's 3,224 rows (6e-9 on synthetic volumes
offset by up to 5,000).
"""

from __future__ import annotations

import torch
from torch import Tensor

from common.errors import RobustsegError
from common.metrics.image_quality import perturbation_norms, psnr, rmse

__all__ = ["InputQuality"]


def _gaussian_1d(win_size: int, sigma: float) -> Tensor:
    """The 1-D factor of MONAI's SSIM window (``monai.metrics.regression._gaussian_kernel``), in float64."""
    dist = torch.arange((1 - win_size) / 2, (1 + win_size) / 2, 1, dtype=torch.float64)
    gauss = torch.exp(-((dist / sigma) ** 2) / 2)
    return gauss / gauss.sum()


class InputQuality:
    """PSNR, SSIM, RMSE and perturbation norms of perturbed inputs against one clean input (the CSV's columns).

    The definitions are those of :mod:`common.metrics.image_quality`: the data range is the clean sample's
    ``max - min`` over all channels and voxels; SSIM uses a Gaussian window (``win_size``, ``kernel_sigma``),
    ``k1 = 0.01``, ``k2 = 0.03``, channels scored separately and the map averaged over valid (unpadded) window
    positions and channels. SSIM is computed with the separable window, in float32 on intensities centred at the
    clean image's mean (see the module docstring), with the clean image's local statistics cached; PSNR, RMSE and
    the norms call :mod:`common.metrics` directly.

    Args:
        clean: the clean input, one sample ``(1, C, *spatial)`` with 2 or 3 spatial dimensions.
        win_size: SSIM window edge in voxels (odd, at most the shortest spatial edge).
        kernel_sigma: SSIM window standard deviation in voxels.

    Raises:
        RobustsegError: if ``clean`` is not one image sample, is constant, or is smaller than the window.

    Example::

        quality = InputQuality(image)
        columns = quality(torch.cat(adversarials))   # {"psnr": (B,), "ssim": (B,), "rmse": ..., "linf": ..., "l2": ...}
    """

    def __init__(self, clean: Tensor, win_size: int = 11, kernel_sigma: float = 1.5) -> None:
        if not isinstance(clean, Tensor) or clean.ndim not in (4, 5) or clean.shape[0] != 1:
            shape = tuple(clean.shape) if isinstance(clean, Tensor) else type(clean).__name__
            raise RobustsegError(f"clean must be one sample (1, C, *spatial) with 2 or 3 spatial dims, got {shape}.")
        if win_size < 1 or win_size % 2 == 0:
            raise RobustsegError(f"win_size must be a positive odd number, got {win_size}.")
        if kernel_sigma <= 0:
            raise RobustsegError(f"kernel_sigma must be > 0, got {kernel_sigma}.")
        if min(clean.shape[2:]) < win_size:
            raise RobustsegError(
                f"win_size: the SSIM window ({win_size}) is larger than the image's spatial shape "
                f"{tuple(clean.shape[2:])}; pass a smaller win_size."
            )
        self.clean = clean.detach()
        self.data_range = float(self.clean.double().amax() - self.clean.double().amin())
        if not self.data_range > 0:
            raise RobustsegError("clean: zero intensity range (max == min), so PSNR/SSIM are undefined.")
        gauss = _gaussian_1d(win_size, kernel_sigma).to(clean.device)
        # the valid 1-D correlation along an axis of length n as an (n - win_size + 1, n) banded matrix: a matrix
        # product runs on BLAS, about ten times faster on a CPU than a grouped convolution with an 11-tap kernel
        self._bands = []
        for size in clean.shape[2:]:
            band = torch.zeros(size - win_size + 1, size, dtype=torch.float64, device=clean.device)
            for start in range(size - win_size + 1):
                band[start, start : start + win_size] = gauss
            self._bands.append(band.float())
        self._shift = float(self.clean.double().mean())
        self._y = self._centred(self.clean)
        self._mu_y64 = self._local_mean(self._y).double()
        self._mean_y = self._mu_y64 + self._shift  # the clean local means, back on the intensity scale
        self._sigma_y = self._local_mean(self._y * self._y).double() - self._mu_y64**2
        self._c1 = (0.01 * self.data_range) ** 2
        self._c2 = (0.03 * self.data_range) ** 2

    def _centred(self, volume: Tensor) -> Tensor:
        """``volume`` minus the clean image's mean intensity, in float32 (float64 arithmetic for the shift)."""
        return (volume.detach().double() - self._shift).float()

    def _local_mean(self, volume: Tensor) -> Tensor:
        """Gaussian-weighted local means over valid window positions, each channel on its own (float32)."""
        out = volume
        for axis, band in enumerate(self._bands, start=2):
            out = torch.movedim(torch.tensordot(out, band, dims=([axis], [1])), -1, axis)
        return out

    def ssim(self, adversarial: Tensor) -> Tensor:
        """SSIM of each sample of ``adversarial`` (B, C, *spatial) against the clean input, shape (B,), float64."""
        self._check(adversarial)
        x = self._centred(adversarial)
        # local moments of centred intensities in float32; the formula in float64
        mu_x64 = self._local_mean(x).double()
        sigma_x = self._local_mean(x * x).double() - mu_x64**2
        sigma_xy = self._local_mean(x * self._y).double() - mu_x64 * self._mu_y64
        mean_x, mean_y = mu_x64 + self._shift, self._mean_y
        luminance = (2 * mean_x * mean_y + self._c1) / (mean_x**2 + mean_y**2 + self._c1)
        contrast_structure = (2 * sigma_xy + self._c2) / (sigma_x + self._sigma_y + self._c2)
        return (luminance * contrast_structure).flatten(start_dim=1).mean(dim=1)

    def _check(self, adversarial: Tensor) -> None:
        if tuple(adversarial.shape[1:]) != tuple(self.clean.shape[1:]):
            raise RobustsegError(
                f"adversarial must have shape (B, {', '.join(str(s) for s in self.clean.shape[1:])}) like the clean "
                f"input, got {tuple(adversarial.shape)}."
            )

    def __call__(self, adversarial: Tensor) -> dict[str, Tensor]:
        """All input-quality columns for a batch of perturbed inputs ``(B, C, *spatial)``.

        Returns:
            Column name (``psnr``, ``ssim``, ``rmse``, ``linf``, ``l2``) -> float64 tensor of shape ``(B,)``.
        """
        self._check(adversarial)
        clean = self.clean.expand_as(adversarial)
        linf, l2 = perturbation_norms(clean, adversarial)
        return {
            "psnr": psnr(clean, adversarial),
            "ssim": self.ssim(adversarial),
            "rmse": rmse(clean, adversarial),
            "linf": linf,
            "l2": l2,
        }
