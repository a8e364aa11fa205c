"""The Gaussian-smoothed segmenter: per-voxel class counts of ``f(x + N(0, sigma^2 I))`` (Cohen et al. 2019; per
voxel, Fischer et al. 2021).

The smoothed segmenter ``g`` predicts, per voxel, the class the base network ``f`` gives most often under Gaussian
input noise. Everything about ``g`` -- its prediction and its certificate (:mod:`common.certify.segcertify`) -- is
estimated from these counts. The noise is in the network's input space: robustseg's inputs are min-max normalised to
[0, 1] per channel, so ``sigma = 0.25`` is a quarter of each channel's intensity range, and a certified radius is an
L2 norm in the same units over the whole ``(C, *spatial)`` input. The noisy input is not clipped to [0, 1] (clipping
would be part of ``f`` and is not what a noise-trained model saw).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.data.labels import BRATS_LABELS, REGION_CHANNELS, channel_argmax
from common.errors import RobustsegError
from common.networks.modes import eval_mode
from common.utils.validation import check_int, check_number

__all__ = ["GaussianSmoothing"]


def check_class_logits(logits: Tensor) -> None:
    """Refuse sigmoid region logits (3 channels, :data:`~common.data.labels.REGION_CHANNELS`): smoothing votes over
    the argmax of per-class scores, and the argmax of three independent region logits is no class (its indices 0, 1,
    2 would be read as the BraTS labels 0, 1, 2).

    Raises:
        RobustsegError: if ``logits`` has 3 channels.
    """
    if logits.ndim >= 2 and logits.shape[1] == len(REGION_CHANNELS):
        raise RobustsegError(
            f"network output: {logits.shape[1]} channels are sigmoid region logits ({', '.join(REGION_CHANNELS)}), "
            f"which randomized smoothing cannot certify; expected softmax logits with one channel per class "
            f"({len(BRATS_LABELS)} for the BraTS labels {list(BRATS_LABELS)})."
        )


class GaussianSmoothing:
    """Count, per voxel, the classes a segmentation network predicts under isotropic Gaussian input noise.

    Each of ``n`` samples is ``argmax_c f(x + delta)_c`` with ``delta ~ N(0, sigma^2 I)``; ``batch_size`` noisy
    copies of one volume go through the network per forward pass. The network runs in eval mode without gradients
    and is left in the mode it was found in. The noise comes from a ``torch.Generator`` seeded by the caller, so the
    same seed gives the same counts.

    Args:
        network: maps ``(B, C_in, *spatial)`` inputs to logits ``(B, C, *spatial)`` (C classes; robustseg's networks
            have 4, for the BraTS labels 0, 1, 2, 4 in that order). Sigmoid region outputs (3 channels) are refused.
        sigma: the noise standard deviation, > 0, in input units (a fraction of the [0, 1] intensity range).
        batch_size: noisy copies per forward pass (memory against speed).

    Raises:
        RobustsegError: if ``sigma`` is not a finite number > 0, ``batch_size`` is not an integer >= 1 or
            ``network`` is not callable.

    Example::

        smoothing = GaussianSmoothing(network, sigma=0.25, batch_size=8)
        counts = smoothing.counts(images, n=100, generator=torch.Generator().manual_seed(0))  # (B, 4, *spatial)
    """

    def __init__(self, network: nn.Module, sigma: float, batch_size: int = 8) -> None:
        if not callable(network):
            raise RobustsegError(f"network must be a callable network, got {type(network).__name__}.")
        self.network = network
        self.sigma = check_number("sigma", sigma, 0, min_inclusive=False, hint="the smoothing noise level")
        self.batch_size = check_int("batch_size", batch_size, minimum=1, hint="noisy copies per forward pass")

    def __repr__(self) -> str:
        return f"GaussianSmoothing(sigma={self.sigma!r}, batch_size={self.batch_size})"

    def counts(self, images: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Per-voxel class counts of the network's argmax over ``n`` noisy copies of each volume.

        Args:
            images: the inputs ``(B, C_in, *spatial)``.
            n: the number of noise samples per volume, >= 1.
            generator: the source of the noise (on the images' device); ``None``: torch's global generator.

        Returns:
            ``(B, C, *spatial)`` counts, ``torch.int32`` (summing to ``n`` over the classes of each voxel).

        Raises:
            RobustsegError: if ``n`` is not an integer >= 1, ``images`` is not ``(B, C_in, *spatial)`` or the network
                gives sigmoid region logits (3 channels; :func:`check_class_logits`).
        """
        n = check_int("n", n, minimum=1, hint="the number of noise samples")
        if images.ndim < 3:
            raise RobustsegError(f"images must be (B, C, *spatial), got shape {tuple(images.shape)}.")
        with eval_mode(self.network), torch.no_grad():
            return torch.stack([self._counts_one(image, n, generator) for image in images])

    def _counts_one(self, image: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
        counts: Tensor | None = None
        done = 0
        while done < n:
            k = min(self.batch_size, n - done)
            noise = torch.randn((k, *image.shape), generator=generator, device=image.device, dtype=image.dtype)
            logits = self.network(noise.mul_(self.sigma).add_(image))
            check_class_logits(logits)
            classes = channel_argmax(logits).flatten(1)  # (k, V)
            if counts is None:
                counts = torch.zeros((logits.shape[1], classes.shape[1]), dtype=torch.int32, device=image.device)
            # counts[classes[s, v], v] += 1 for every sample s and voxel v
            counts.scatter_add_(0, classes, torch.ones_like(classes, dtype=torch.int32))
            done += k
        assert counts is not None
        return counts.reshape(counts.shape[0], *image.shape[1:])
