"""TemperatureScaledLoss == the wrapped loss of logits / T, computed directly (training a teacher at T)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import RobustsegError
from common.losses import SoftDiceLoss, TemperatureScaledLoss

BRATS = np.array([0, 1, 2, 4])


def _hand_soft_dice_ce(logits: np.ndarray, labels: np.ndarray, temperature: float, ce_weight: float) -> float:
    """Eq. 5 (background ignored) plus ``ce_weight`` x cross-entropy, both on softmax(logits / T), with numpy."""
    z = logits / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    index = np.searchsorted(BRATS, labels[:, 0])  # (B, *spatial) class indices
    onehot = np.stack([(index == c) for c in range(len(BRATS))], axis=1).astype(float)
    smooth = 1e-5
    dice = [
        (2 * (p[b, i] * onehot[b, i]).sum() + smooth) / (p[b, i].sum() + onehot[b, i].sum() + smooth)
        for b in range(logits.shape[0])
        for i in range(1, len(BRATS))
    ]
    cross_entropy = -np.mean(np.log(np.take_along_axis(p, index[:, None], axis=1)))
    return 1.0 - float(np.mean(dice)) + ce_weight * cross_entropy


@pytest.mark.parametrize("temperature", [1.0, 20.0, 5000.0])
@pytest.mark.parametrize("ce_weight", [0.0, 1.0])
@pytest.mark.parametrize("shape", [(2, 4, 5, 6, 7), (3, 4, 8, 8)])
def test_matches_direct_computation(temperature, ce_weight, shape):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=shape) * 3 * temperature  # the scale a network trained at T reaches
    labels = BRATS[rng.integers(0, 4, size=(shape[0], 1, *shape[2:]))]
    loss = TemperatureScaledLoss(SoftDiceLoss(ce_weight=ce_weight), temperature)
    got = loss(torch.tensor(logits), torch.tensor(labels))
    assert got.item() == pytest.approx(_hand_soft_dice_ce(logits, labels, temperature, ce_weight), rel=1e-5)


@pytest.mark.parametrize("temperature", [2.0, 100.0])
def test_gradient_is_the_wrapped_gradient_over_t(temperature):
    """d loss(z / T) / dz = (d loss / dz)(z / T) / T: the teacher's logits must grow T times to learn as fast."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 6, 6, 6, generator=generator, dtype=torch.float64) * temperature
    labels = torch.tensor(BRATS)[torch.randint(0, 4, (2, 1, 6, 6, 6), generator=generator)]
    scaled = logits.clone().requires_grad_(True)
    TemperatureScaledLoss(SoftDiceLoss(ce_weight=1.0), temperature)(scaled, labels).backward()
    plain = (logits / temperature).requires_grad_(True)
    SoftDiceLoss(ce_weight=1.0)(plain, labels).backward()
    torch.testing.assert_close(scaled.grad, plain.grad / temperature)


def test_temperature_one_is_the_plain_loss():
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 4, 5, 5, 5, generator=generator)
    labels = torch.tensor(BRATS)[torch.randint(0, 4, (1, 1, 5, 5, 5), generator=generator)]
    loss = SoftDiceLoss(ce_weight=1.0)
    assert torch.equal(TemperatureScaledLoss(loss, 1)(logits, labels), loss(logits, labels))
    assert "temperature=1.0" in repr(TemperatureScaledLoss(loss, 1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0}, "temperature must be a finite number > 0, got 0"),
        ({"temperature": -3.0}, "temperature must be a finite number > 0, got -3.0"),
        ({"temperature": float("inf")}, "temperature must be a finite number"),
        ({"loss": "soft_dice"}, "loss must be a callable of \\(logits, target\\), got str"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"loss": SoftDiceLoss(), "temperature": 2.0, **kwargs}
    with pytest.raises(RobustsegError, match=match) as info:
        TemperatureScaledLoss(**arguments)
    assert "\n" not in str(info.value)
