"""Loss scaling of the fp16 input gradient: no underflow, no overflow, the unscaled gradient where not fp16."""

from __future__ import annotations

import pytest
import torch

from common.attacks.gradient import FP16_LOSS_SCALE, input_gradient


def _half_graph(x: torch.Tensor, inner: float, outer: float) -> torch.Tensor:
    """A loss whose backward runs in float16: ``outer * sum((inner * x)^2)`` with the square taken in half."""
    y = (x.half() * inner) ** 2
    return y.float().sum() * outer


def _exact(x: torch.Tensor, inner: float, outer: float) -> torch.Tensor:
    return (2 * inner**2 * outer * x.double()).float()


def test_fp16_scaling_recovers_an_underflowing_gradient():
    x = torch.linspace(0.1, 1.0, 16, requires_grad=True)
    inner, outer = 1e-2, 1e-4  # per-element half gradient ~ 2e-8 * x: below float16's smallest subnormal (6e-8)
    plain = input_gradient(_half_graph(x, inner, outer), x)
    assert torch.count_nonzero(plain) < len(x) // 2  # the unscaled fp16 backward loses most of it
    scaled = input_gradient(_half_graph(x, inner, outer), x, fp16=True)
    torch.testing.assert_close(scaled, _exact(x, inner, outer), rtol=2e-2, atol=0)
    assert torch.equal(scaled.sign(), x.sign())


@pytest.mark.parametrize("outer", [1.0, 30.0])
def test_fp16_scaling_backs_off_when_the_scaled_gradient_overflows(outer):
    x = torch.linspace(0.5, 1.0, 8, requires_grad=True)
    inner = 1.0  # gradient ~ 2 * outer * x: times 2^16 it overflows float16 (max 65504)
    assert not torch.isfinite(torch.autograd.grad(_half_graph(x, inner, outer) * FP16_LOSS_SCALE, x)[0]).all()
    grad = input_gradient(_half_graph(x, inner, outer), x, fp16=True)
    assert torch.isfinite(grad).all()
    torch.testing.assert_close(grad, _exact(x, inner, outer), rtol=2e-3, atol=0)


def test_without_fp16_it_is_the_plain_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    loss = (x**3).sum()
    torch.testing.assert_close(input_gradient(loss, x), 3 * x.detach() ** 2)
