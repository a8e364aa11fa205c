"""Tests for :mod:`common.certify.smoothing`: counts of the Gaussian-smoothed segmenter."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import binom, norm
from torch import nn

from common.certify import GaussianSmoothing, certify
from common.certify.adaptive import SmoothedLogits, smoothed_prediction
from common.errors import RobustsegError

from .conftest import SIGMA, margin_volume


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("n, batch_size", [(1, 1), (10, 3), (64, 64), (50, 8)])
def test_counts_sum_to_n_per_voxel(tiny_net, n, batch_size):
    images = torch.rand(2, 1, 4, 5, 3)
    counts = GaussianSmoothing(tiny_net, SIGMA, batch_size).counts(images, n, _generator())
    assert counts.shape == (2, 4, 4, 5, 3) and counts.dtype == torch.int32
    assert bool((counts.sum(1) == n).all())


def test_counts_follow_the_closed_form(threshold_net):
    """Per voxel, class 1 has probability Phi((x - 0.5) / sigma): each count lies within the central 1 - 1e-6 of
    Binomial(n, p) (every voxel, so a failure would be a bug, not chance)."""
    images, n = margin_volume(), 400
    counts = GaussianSmoothing(threshold_net, SIGMA, 100).counts(images, n, _generator(1))
    p = norm.cdf((images.double() - 0.5) / SIGMA).reshape(-1)
    low, high = binom.ppf(1e-6 / 2 / p.size, n, p), binom.isf(1e-6 / 2 / p.size, n, p)
    ones = counts[:, 1].reshape(-1).numpy()
    assert ((ones >= low) & (ones <= high)).all()


def test_same_seed_same_counts_other_seed_other_counts(tiny_net):
    smoothing = GaussianSmoothing(tiny_net, 0.5, 4)
    images = torch.rand(1, 1, 6, 6, 6, generator=_generator(3))
    first = smoothing.counts(images, 20, _generator(0))
    assert torch.equal(first, smoothing.counts(images, 20, _generator(0)))
    assert not torch.equal(first, smoothing.counts(images, 20, _generator(1)))


@pytest.mark.parametrize("training", [True, False])
def test_runs_in_eval_mode_without_gradients_and_restores_the_mode(threshold_net, tiny_net, training):
    threshold_net.train(training)
    GaussianSmoothing(threshold_net, SIGMA, 4).counts(margin_volume(), 8, _generator())
    assert threshold_net.modes == [False, False] and threshold_net.training is training
    tiny_net.train(training)
    images = torch.rand(1, 1, 4, 4, 4, requires_grad=True)
    GaussianSmoothing(tiny_net, SIGMA, 4).counts(images, 8, _generator())
    assert tiny_net.training is training and images.grad is None
    assert all(p.grad is None for p in tiny_net.parameters())


def test_sigma_scales_the_noise(threshold_net):
    """A voxel 0.25 above the threshold: class 1 with probability Phi(0.25 / sigma), ~0.84 at 0.25, ~0.6 at 1."""
    images = torch.full((1, 1, 8, 8, 8), 0.75)
    for sigma in (0.25, 1.0):
        counts = GaussianSmoothing(threshold_net, sigma, 50).counts(images, 100, _generator())
        share = counts[:, 1].double().mean().item() / 100
        assert share == pytest.approx(norm.cdf(0.25 / sigma), abs=0.02)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma": 0.0}, "sigma must be a finite number > 0"),
        ({"sigma": -0.1}, "sigma must be a finite number > 0"),
        ({"sigma": math.nan}, "sigma must be a finite number > 0"),
        ({"sigma": True}, "sigma must be a finite number > 0"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"network": "net"}, "network must be a callable network"),
    ],
)
def test_bad_settings_raise_one_line(tiny_net, kwargs, match):
    settings = {"network": tiny_net, "sigma": SIGMA, "batch_size": 4, **kwargs}
    with pytest.raises(RobustsegError, match=match) as info:
        GaussianSmoothing(**settings)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "n, images, match",
    [(0, torch.rand(1, 1, 4, 4, 4), "n must be an integer >= 1"), (2.5, torch.rand(1, 1, 4, 4, 4), "n must be"),
     (5, torch.rand(4, 4), r"images must be \(B, C, \*spatial\)")],
)  # fmt: skip
def test_bad_counts_arguments_raise(tiny_net, n, images, match):
    with pytest.raises(RobustsegError, match=match):
        GaussianSmoothing(tiny_net, SIGMA).counts(images, n)


REGION_REFUSAL = r"^network output: 3 channels are sigmoid region logits \(WT, TC, ET\), which randomized smoothing"


@pytest.mark.parametrize(
    "call",
    [
        lambda net, x: certify(GaussianSmoothing(net, 0.25, 4), x, n0=4, n=8, alpha=0.01),
        lambda net, x: smoothed_prediction(GaussianSmoothing(net, 0.25, 4), x, n=4),
        lambda net, x: SmoothedLogits(net, sigma=0.25, samples=2)(x),
    ],
    ids=["certify", "smoothed_prediction", "SmoothedLogits"],
)
def test_sigmoid_region_outputs_are_refused_in_one_line(call):
    """The argmax (or softmax) of three independent region logits is no class: refused, not certified as labels 0-2."""
    torch.manual_seed(0)
    with pytest.raises(RobustsegError, match=REGION_REFUSAL) as info:
        call(nn.Conv3d(2, 3, 1), torch.rand(1, 2, 3, 3, 3))
    assert "\n" not in str(info.value)
