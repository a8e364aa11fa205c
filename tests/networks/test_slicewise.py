"""Tests of slice-wise application of a 2D network to volumes (common/networks/slicewise.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.errors import RobustsegError
from common.networks import SliceWise, UNet2D


@pytest.fixture
def net2d() -> UNet2D:
    torch.manual_seed(0)
    return UNet2D(in_channels=2, out_channels=3, base_filters=2, levels=2, segmentation_levels=1).eval()


def _per_slice_loop(net2d: nn.Module, x: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.stack([net2d(x.select(axis, i)) for i in range(x.shape[axis])], dim=axis)


@pytest.mark.parametrize("axis", [2, 3, 4, -3, -2, -1])
def test_matches_per_slice_loop(net2d, axis):
    x = torch.rand(2, 2, 6, 4, 8)  # batch of two: slices of different volumes must not be mixed up
    with torch.no_grad():
        out = SliceWise(net2d, axis=axis)(x)
        expected = _per_slice_loop(net2d, x, axis)
    assert out.shape == (2, 3, 6, 4, 8)
    torch.testing.assert_close(out, expected)


def test_default_axis_is_last():
    assert SliceWise(nn.Identity()).axis == 4


@pytest.mark.parametrize("slice_batch_size", [1, 3, 8, 16, 100])
def test_chunked_equals_unchunked(net2d, slice_batch_size):
    x = torch.rand(2, 2, 4, 4, 8)
    with torch.no_grad():
        torch.testing.assert_close(SliceWise(net2d, slice_batch_size=slice_batch_size)(x), SliceWise(net2d)(x))


@pytest.mark.parametrize("slice_batch_size", [None, 3])
def test_gradient_reaches_every_voxel(net2d, slice_batch_size):
    x = torch.rand(1, 2, 4, 6, 5, requires_grad=True)
    out = SliceWise(net2d, axis=-1, slice_batch_size=slice_batch_size)(x)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    assert grad.shape == x.shape
    assert (grad != 0).all()
    # the gradient of slice k is that of the 2D network on slice k
    x_slice = x.detach()[..., 2].requires_grad_(True)
    (slice_grad,) = torch.autograd.grad(net2d(x_slice).square().sum(), x_slice)
    torch.testing.assert_close(grad[..., 2], slice_grad)


def test_torchscript_matches_eager(net2d):
    net = SliceWise(net2d, axis=-2, slice_batch_size=3)
    x = torch.rand(1, 2, 4, 7, 6)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(net)(x), net(x))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"net2d": lambda x: x}, "net2d must be a torch.nn.Module, got function"),
        ({"axis": 1}, r"axis must be one of .* \(a spatial axis .* got 1"),
        ({"axis": -4}, r"axis must be one of .* \(a spatial axis .* got -4"),
        ({"axis": True}, r"axis must be one of .* \(a spatial axis .* got True"),
        ({"slice_batch_size": 0}, "slice_batch_size must be None or an integer >= 1, got 0"),
        ({"slice_batch_size": 2.5}, "slice_batch_size must be None or an integer >= 1, got 2.5"),
    ],
)
def test_bad_arguments_raise(kwargs, pattern):
    with pytest.raises(RobustsegError, match=pattern):
        SliceWise(**({"net2d": nn.Identity()} | kwargs))


def test_non_volume_input_raises(net2d):
    with pytest.raises(RobustsegError, match=r"SliceWise input must have shape \(B, C, H, W, D\), got \[1, 2, 4, 4\]"):
        SliceWise(net2d)(torch.rand(1, 2, 4, 4))
