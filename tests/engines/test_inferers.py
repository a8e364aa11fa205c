"""AutocastInferer: bf16 on CPU close to fp32, disabled = exact, output float32, gradients flow."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from common.engines import AutocastInferer
from common.errors import RobustsegError


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


def test_bad_arguments():
    with pytest.raises(ValueError, match="float8"):
        AutocastInferer(dtype="float8")
    with pytest.raises(RobustsegError, match="inferer"):
        AutocastInferer(inferer=3)
