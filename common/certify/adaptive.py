"""Attacking the smoothed segmenter: a differentiable surrogate of ``g`` and its prediction under attack.

A certificate (:mod:`common.certify.segcertify`) is a lower bound on the Dice of the *smoothed* segmenter ``g`` under
any L2 perturbation of norm at most ``r``; an attack on ``g`` gives an upper bound. The gap between the two is what
nobody knows yet about ``g``'s robustness. ``g`` itself (a per-voxel majority vote of ``f`` under noise) has no
gradient, so the attack follows SmoothAdv (Salman et al., NeurIPS 2019, "Provably Robust Deep Learning via
Adversarially Trained Smoothed Classifiers", eq. (6)): it ascends a loss of the Monte Carlo estimate of the smoothed
*soft* classifier,

    G(x) = (1/k) sum_i softmax(f(x + delta_i)),    delta_i ~ N(0, sigma^2 I),

with fresh noise at every call (expectation over transformation). :class:`SmoothedLogits` returns ``log G(x)`` per
voxel, which any robustseg attack loss treats as logits (``softmax(log G) = G``), so PGD and APGD with their L2 threat
model, best-iterate tracking and restarts run on it unchanged. The adversarial input is then scored by ``g``'s own
prediction: the per-voxel majority class of ``n`` fresh noise samples (:func:`smoothed_prediction`), without
abstention.

Salman et al. found this attack on the soft smoothed classifier much stronger than attacking the base network or the
hard ``g`` directly; it is the strongest known empirical attack on a smoothed classifier, so the empirical Dice it
gives is an upper bound only (a stronger future attack may lower it), while the certified Dice is a lower bound that
holds with probability ``1 - alpha``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from common.certify.smoothing import GaussianSmoothing, check_class_logits
from common.data.labels import BRATS_LABELS, channel_argmax, indices_to_labels
from common.errors import RobustsegError
from common.utils.validation import check_int, check_number

__all__ = ["SmoothedLogits", "smoothed_prediction"]

_TINY = 1e-12
"""Floor of the smoothed probabilities before the log (a class no noisy copy gives would be -inf)."""


class SmoothedLogits(nn.Module):
    """``log`` of the Monte Carlo smoothed soft segmenter ``(1/k) sum_i softmax(f(x + delta_i))`` (SmoothAdv).

    Every call draws ``samples`` fresh Gaussian noise tensors per input from the module's own generator, seeded at
    construction and by :meth:`reseed`, so an attack that calls it in the same order gets the same noise: seeded runs
    are reproducible. The noisy copies of the whole batch go through ``network`` in one pass of ``B * samples``
    volumes (memory grows with both). The noisy input is not clipped, as in :class:`GaussianSmoothing`.

    Args:
        network: maps ``(B, C_in, *spatial)`` inputs to logits ``(B, C, *spatial)``.
        sigma: the smoothing noise level, > 0, in input units (the certificate's ``sigma``).
        samples: noise draws per input and call (SmoothAdv's ``m``), >= 1.
        seed: seed of the noise.

    Raises:
        RobustsegError: if ``network`` is not a module, ``sigma`` is not a finite number > 0, or ``samples`` or
            ``seed`` is not an integer in range; when called, if the network gives sigmoid region logits (3
            channels).

    Example::

        surrogate = SmoothedLogits(network, sigma=0.25, samples=8, seed=0)
        adv = make_attack({"name": "APGD", "norm": "l2", "epsilon": 0.1, "relative": False})(surrogate, x, y)
        labels = smoothed_prediction(GaussianSmoothing(network, 0.25), adv, n=100, seed=1)
    """

    def __init__(self, network: nn.Module, sigma: float, samples: int = 8, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise RobustsegError(f"network must be a torch.nn.Module, got {type(network).__name__}.")
        self.network = network
        self.sigma = check_number("sigma", sigma, 0, min_inclusive=False, hint="the smoothing noise level")
        self.samples = check_int("samples", samples, minimum=1, hint="noise draws per input (SmoothAdv's m)")
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the noise from ``seed`` (the generator moves to the input's device at the next call)."""
        self.seed = check_int("seed", seed)
        self._generator: torch.Generator | None = None

    def extra_repr(self) -> str:
        return f"sigma={self.sigma!r}, samples={self.samples}, seed={self.seed}"

    def forward(self, images: Tensor) -> Tensor:
        """``log G(images)``: ``(B, C, *spatial)`` float32 log-probabilities, differentiable in ``images``."""
        if images.ndim < 3:
            raise RobustsegError(f"images must be (B, C, *spatial), got shape {tuple(images.shape)}.")
        if self._generator is None or self._generator.device != images.device:
            self._generator = torch.Generator(device=images.device).manual_seed(self.seed)
        shape = (self.samples, *images.shape)
        noise = torch.randn(shape, generator=self._generator, device=images.device, dtype=images.dtype)
        noisy = (images.unsqueeze(0) + self.sigma * noise).flatten(0, 1)  # sample-major: (k * B, C_in, *spatial)
        logits = self.network(noisy)
        check_class_logits(logits)  # a softmax over sigmoid region logits would be no distribution over classes
        probabilities = logits.float().softmax(1)
        mean = probabilities.unflatten(0, (self.samples, images.shape[0])).mean(0)
        return mean.clamp_min(_TINY).log()


def smoothed_prediction(
    smoothing: GaussianSmoothing, images: Tensor, n: int, seed: int = 0, values: tuple[int, ...] = BRATS_LABELS
) -> Tensor:
    """The smoothed segmenter's label map: per voxel, the class ``f`` gives most often over ``n`` noise samples.

    This is ``g``'s Monte Carlo prediction without abstention (Cohen et al.'s PREDICT without its test): ties go to
    the first class. Use it to score an input ``g`` is attacked on.

    Args:
        smoothing: the smoothed network.
        images: inputs ``(B, C_in, *spatial)``.
        n: noise samples per volume, >= 1.
        seed: seeds the noise.
        values: the label of each class index (BraTS 0, 1, 2, 4 by default).

    Returns:
        ``(B, 1, *spatial)`` label map, long.

    Raises:
        RobustsegError: if ``smoothing`` is not a :class:`GaussianSmoothing` or ``n``/``seed`` is not an integer in
            range.
    """
    if not isinstance(smoothing, GaussianSmoothing):
        raise RobustsegError(f"smoothing must be a GaussianSmoothing, got {type(smoothing).__name__}.")
    generator = torch.Generator(device=images.device).manual_seed(check_int("seed", seed))
    return indices_to_labels(channel_argmax(smoothing.counts(images, n, generator)), values)
