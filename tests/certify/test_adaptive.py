"""Tests for :mod:`common.certify.adaptive`: the SmoothAdv surrogate of the smoothed segmenter (against a direct
transcription of Salman et al.'s Monte Carlo soft classifier) and the smoothed prediction an attacked input is scored
by."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.certify import GaussianSmoothing
from common.certify.adaptive import SmoothedLogits, smoothed_prediction
from common.data.labels import BRATS_LABELS
from common.errors import RobustsegError


def _net(channels_in: int = 2, dims: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv = nn.Conv3d if dims == 3 else nn.Conv2d
    return conv(channels_in, 4, kernel_size=3, padding=1)


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("samples", [1, 5])
def test_matches_the_transcription_of_the_monte_carlo_soft_classifier(dims, samples):
    network = _net(dims=dims)
    images = torch.rand(2, 2, *(6,) * dims)
    surrogate = SmoothedLogits(network, sigma=0.3, samples=samples, seed=7)
    out = surrogate(images)
    # G(x) = 1/k sum_i softmax(f(x + delta_i)), delta_i ~ N(0, sigma^2 I): the same draws, one input at a time
    generator = torch.Generator().manual_seed(7)
    noise = torch.randn((samples, *images.shape), generator=generator)
    for b in range(len(images)):
        soft = sum(torch.softmax(network(images[b : b + 1] + 0.3 * noise[i, b : b + 1]), 1) for i in range(samples))
        torch.testing.assert_close(out[b : b + 1], torch.log(soft / samples), atol=1e-5, rtol=1e-5)
    assert out.shape == (2, 4, *(6,) * dims) and out.dtype == torch.float32
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2, *(6,) * dims))


def test_fresh_noise_every_call_and_the_seed_repeats_it():
    network, images = _net(), torch.rand(1, 2, 5, 5, 5)
    surrogate = SmoothedLogits(network, sigma=0.5, samples=3, seed=1)
    first, second = surrogate(images), surrogate(images)
    assert not torch.equal(first, second)  # expectation over transformation: new draws per step
    surrogate.reseed(1)
    assert torch.equal(surrogate(images), first)
    assert torch.equal(SmoothedLogits(network, 0.5, 3, seed=1)(images), first)
    assert not torch.equal(SmoothedLogits(network, 0.5, 3, seed=2)(images), first)


def test_tiny_noise_gives_the_base_networks_log_softmax():
    network, images = _net(), torch.rand(2, 2, 4, 4, 4)
    out = SmoothedLogits(network, sigma=1e-7, samples=2)(images)
    torch.testing.assert_close(out, torch.log_softmax(network(images), 1), atol=1e-4, rtol=1e-4)


def test_the_gradient_reaches_the_input_and_not_the_noise():
    network, images = _net(), torch.rand(1, 2, 4, 4, 4, requires_grad=True)
    SmoothedLogits(network, sigma=0.2, samples=4)(images)[:, 1].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sigma": 0.0}, "sigma must be a finite number > 0"),
        ({"sigma": float("nan")}, "sigma must be a finite number > 0"),
        ({"samples": 0}, "samples must be an integer >= 1"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_settings_give_one_line(kwargs, match):
    with pytest.raises(RobustsegError, match=match):
        SmoothedLogits(_net(), **{"sigma": 0.1, **kwargs})


def test_a_non_module_network_is_refused():
    with pytest.raises(RobustsegError, match="network must be a torch.nn.Module"):
        SmoothedLogits(lambda x: x, sigma=0.1)  # type: ignore[arg-type]


class _Constant(nn.Module):
    """Predicts class ``index`` everywhere, whatever the input."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def forward(self, x):
        logits = torch.zeros(x.shape[0], 4, *x.shape[2:])
        logits[:, self.index] = 1.0
        return logits


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_the_smoothed_prediction_is_the_majority_label(index):
    labels = smoothed_prediction(GaussianSmoothing(_Constant(index), 0.5, 4), torch.rand(2, 1, 3, 3, 3), n=9)
    assert labels.shape == (2, 1, 3, 3, 3) and (labels == BRATS_LABELS[index]).all()


def test_the_smoothed_prediction_is_the_argmax_of_the_counts():
    network, images = _net(), torch.rand(1, 2, 5, 5, 5)
    smoothing = GaussianSmoothing(network, 0.4, 8)
    counts = smoothing.counts(images, 16, torch.Generator().manual_seed(3))
    expected = torch.tensor(BRATS_LABELS)[counts.argmax(1, keepdim=True)]
    assert torch.equal(smoothed_prediction(smoothing, images, 16, seed=3), expected)


def test_the_smoothed_prediction_wants_a_gaussian_smoothing():
    with pytest.raises(RobustsegError, match="smoothing must be a GaussianSmoothing"):
        smoothed_prediction(_net(), torch.rand(1, 2, 3, 3, 3), 4)  # type: ignore[arg-type]
