"""Models with a known smoothed answer for the certification tests.

:class:`ThresholdNet` is a per-voxel linear classifier with two classes: logits ``(0, x_v - 0.5)`` for a
one-channel input, so voxel ``v`` is class 1 exactly when ``x_v > 0.5``. Under noise ``N(0, sigma^2 I)`` the
probability of the voxel's true class is ``Phi(|x_v - 0.5| / sigma)`` in closed form, the smoothed prediction is the
clean one, and the exact L2 robustness radius of the smoothed prediction at ``v`` is ``|x_v - 0.5|`` (only the
voxel's own coordinate matters) -- the radius a certificate ``sigma Phi^-1(p_lower)`` approaches from below.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

SIGMA = 0.25


class ThresholdNet(nn.Module):
    """Two-class logits ``(0, x - threshold)`` per voxel of a one-channel volume; records the modes it ran in."""

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold
        self.modes: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.modes.append(self.training)
        return torch.cat([torch.zeros_like(x), x - self.threshold], dim=1)


def margin_volume(shape: tuple[int, ...] = (4, 4, 4)) -> Tensor:
    """A ``(1, 1, *shape)`` volume whose voxels take evenly spaced values in [0, 1] (distances 0 to 0.5 from 0.5)."""
    count = int(torch.tensor(shape).prod())
    return torch.linspace(0.0, 1.0, count, dtype=torch.float64).float().reshape(1, 1, *shape)


@pytest.fixture
def threshold_net() -> ThresholdNet:
    return ThresholdNet()


@pytest.fixture
def tiny_net() -> nn.Module:
    """A small random non-linear 3D segmentation network (1 input channel, 4 classes), seeded; its weights are
    scaled so that inputs in [0, 1] get all four classes and, under noise of sigma 0.25, a mix of confident and
    unsure voxels."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 4, 1))
    with torch.no_grad():
        net[0].weight.mul_(8)
        net[0].bias.fill_(-2.0)
        net[2].weight.mul_(3)
    return net
