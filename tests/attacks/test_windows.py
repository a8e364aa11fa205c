"""Tests for :mod:`common.attacks.windows`: the window-by-window gradient equals autograd through MONAI's inferer."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer, SlidingWindowInfererAdapt

from common.attacks import IterativeFGSM
from common.attacks.windows import windowed_logits
from common.engines.inferers import AutocastInferer, PairedForwardInferer
from common.networks import UNet3D


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return UNet3D(in_channels=4, out_channels=4, base_filters=2, levels=3, segmentation_levels=2).eval().double()


def _autograd(images, inferer, network, grad_out):
    x = images.clone().requires_grad_(True)
    out = inferer(x, network)
    return out, torch.autograd.grad(out, x, grad_out)[0]


def _windowed(images, inferer, network, grad_out):
    x = images.clone().requires_grad_(True)
    out = windowed_logits(x, inferer, network)
    assert out is not None
    return out, torch.autograd.grad(out, x, grad_out)[0]


@pytest.mark.parametrize(
    ("shape", "roi", "overlap", "mode", "sw_batch_size"),
    [
        ((2, 4, 13, 12, 11), (8, 8, 8), 0.25, "gaussian", 1),
        ((1, 4, 12, 12, 12), (8, 8, 8), 0.5, "constant", 3),
        ((1, 4, 16, 9, 12), (16, 8, 8), 0.4, "gaussian", 4),
        ((1, 4, 8, 8, 8), (8, 8, 8), 0.25, "gaussian", 1),  # one window
    ],
)
def test_logits_and_gradient_equal_autograd(network, shape, roi, overlap, mode, sw_batch_size):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(*shape, dtype=torch.float64, generator=generator)
    grad_out = torch.randn(shape[0], 4, *shape[2:], dtype=torch.float64, generator=generator)
    inferer = SlidingWindowInferer(roi, sw_batch_size=sw_batch_size, overlap=overlap, mode=mode)
    out, grad = _windowed(images, inferer, network, grad_out)
    expected_out, expected_grad = _autograd(images, inferer, network, grad_out)
    torch.testing.assert_close(out, expected_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


def test_the_bundles_inferer_chain_is_unwrapped(network):
    """``AutocastInferer(PairedForwardInferer(SlidingWindowInferer))``, as ``inference.json`` builds it."""
    images = torch.rand(1, 4, 12, 12, 12, dtype=torch.float64)
    grad_out = torch.randn(1, 4, 12, 12, 12, dtype=torch.float64)
    window = SlidingWindowInferer((8, 8, 8), sw_batch_size=1, overlap=0.25, mode="gaussian")
    chain = AutocastInferer(PairedForwardInferer(window, max_voxels=8**3), enabled=False)
    out, grad = _windowed(images, chain, network, grad_out)
    expected_out, expected_grad = _autograd(images, window, network, grad_out)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize(
    "inferer",
    [
        SlidingWindowInferer((16, 8, 8)),  # larger than the volume: MONAI pads
        SlidingWindowInferer((8, 8, 8), buffer_steps=1),
        SlidingWindowInferer((8, 8, 8), device="cpu"),
        SlidingWindowInfererAdapt((8, 8, 8)),
        PairedForwardInferer(),  # a SimpleInferer inside
    ],
)
def test_other_inferers_are_left_to_autograd(inferer, network):
    images = torch.rand(1, 4, 12, 12, 12, dtype=torch.float64, requires_grad=True)
    assert windowed_logits(images, inferer, network) is None


def test_an_attack_through_windows_equals_one_through_plain_autograd(network):
    """The attack takes the windowed path for a SlidingWindowInferer and plain autograd for any other callable."""
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(1, 4, 14, 12, 10, dtype=torch.float64, generator=generator)
    labels = torch.tensor([0, 1, 2, 4])[torch.randint(0, 4, (1, 1, 14, 12, 10), generator=generator)]
    window = SlidingWindowInferer((8, 8, 8), sw_batch_size=2, overlap=0.25, mode="gaussian")
    windowed = IterativeFGSM(0.05, steps=2, inferer=window)(network, images, labels)
    plain = IterativeFGSM(0.05, steps=2, inferer=lambda x, net: window(x, net))(network, images, labels)
    assert (windowed != plain).float().mean() < 1e-3  # a sign may flip where the gradient is ~0
