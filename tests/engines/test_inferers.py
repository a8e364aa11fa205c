"""Inferers (common/engines/inferers.py): AutocastInferer (bf16 on CPU close to fp32, disabled = exact, output float32,
gradients flow) and PairedForward(Inferer) (one small CPU volume as two copies: same result and input gradient)."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from common.engines import AutocastInferer, PairedForward, PairedForwardInferer
from common.errors import RobustsegError
from common.networks import UNet3D


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(2, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 3, 1))


def test_disabled_is_exact():
    net, x = _net(), torch.randn(1, 2, 8, 8, 8)
    assert torch.equal(AutocastInferer(enabled=False)(x, net), net(x))


@pytest.mark.parametrize("inner", [None, SlidingWindowInferer(roi_size=(4, 4, 4), sw_batch_size=2)])
def test_bf16_close_and_float32(inner):
    net, x = _net(), torch.randn(1, 2, 8, 8, 8)
    ref = (inner or (lambda a, n: n(a)))(x, net)
    out = AutocastInferer(inner)(x, net)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.05, rtol=0.05)
    assert not torch.equal(out, ref), "bf16 autocast should actually change the arithmetic"


def test_gradient_flows_through_autocast():
    net, x = _net(), torch.randn(1, 2, 8, 8, 8, requires_grad=True)
    AutocastInferer()(x, net).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: AutocastInferer(dtype="float8"), "float8"),
        (lambda: AutocastInferer(inferer=3), "inferer must be a MONAI inferer"),
        (lambda: PairedForwardInferer(inferer=3), "inferer must be a MONAI inferer"),
        (lambda: PairedForwardInferer(max_voxels=-1), "max_voxels must be an integer >= 0"),
        (lambda: PairedForward(3), "network must be a callable network"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises((ValueError, RobustsegError), match=match):
        make()


class _Sizes(torch.nn.Module):
    """Remember the batch size of every call of a network."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network, self.sizes = network, []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(len(x))
        return self.network(x)


SLIDING = SlidingWindowInferer(roi_size=(32, 32, 32), sw_batch_size=1)


@pytest.mark.parametrize(
    ("batch", "size", "inner", "calls"),
    [
        (1, 32, None, {2}),  # one small volume: two copies
        (1, 64, None, {1}),  # above max_voxels: as it is
        (2, 32, None, {2}),  # a batch already: as it is
        (1, 64, SLIDING, {2}),  # every 32^3 window of one volume: two copies
    ],
)
def test_a_cpu_batch_of_one_small_volume_runs_as_two_copies(batch, size, inner, calls):
    """Same result and input gradient as the plain network (another kernel: float rounding only)."""
    torch.manual_seed(0)
    net = UNet3D(base_filters=4).eval()
    sizes = _Sizes(net)
    x = torch.randn(batch, 4, size, size, size, requires_grad=True)
    out = PairedForwardInferer(inner)(x, sizes)
    grad = torch.autograd.grad(out.square().sum(), x)[0]
    ref = (inner or (lambda a, n: n(a)))(x, net)
    ref_grad = torch.autograd.grad(ref.square().sum(), x)[0]
    assert out.shape == ref.shape == (batch, 4, size, size, size)
    assert set(sizes.sizes) == calls
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert ((grad - ref_grad).norm() / ref_grad.norm()).item() < 1e-2


def test_paired_forward_holds_the_network_so_modes_reach_it():
    net = UNet3D(base_filters=2, levels=3, segmentation_levels=2).train()
    wrapper = PairedForward(net)
    wrapper.eval()
    assert not any(m.training for m in net.modules())
    assert list(wrapper.parameters()) == list(net.parameters())
