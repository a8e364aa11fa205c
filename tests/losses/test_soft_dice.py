"""SoftDiceLoss == the paper's eq. 5, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import RobustsegError
from common.losses import SoftDiceLoss

VALUES = (0, 1, 2, 4)


def _hand_eq5(logits: np.ndarray, labels: np.ndarray, smooth: float, temperature: float = 1.0) -> float:
    """Eq. 5 written out with numpy loops: 1 - mean over samples and foreground classes of the soft Dice."""
    z = logits / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dice = []
    for b in range(logits.shape[0]):
        for i, value in enumerate(VALUES):
            if i == 0:
                continue  # background ignored
            y = (labels[b, 0] == value).astype(np.float64)
            dice.append((2 * (p[b, i] * y).sum() + smooth) / (p[b, i].sum() + y.sum() + smooth))
    return 1.0 - float(np.mean(dice))


@pytest.mark.parametrize("shape", [(2, 4, 5, 6, 7), (3, 4, 8, 8)])
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 20.0])
def test_matches_hand_computation(shape, smooth, temperature):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=shape) * 3
    labels = np.array(VALUES)[rng.integers(0, 4, size=(shape[0], 1, *shape[2:]))]
    got = SoftDiceLoss(smooth=smooth, temperature=temperature)(torch.tensor(logits), torch.tensor(labels))
    assert got.item() == pytest.approx(_hand_eq5(logits, labels, smooth, temperature), rel=1e-5)


def test_perfect_prediction_is_zero_and_gradient_flows():
    labels = torch.tensor(VALUES)[torch.randint(0, 4, (1, 1, 6, 6, 6), generator=torch.Generator().manual_seed(1))]
    onehot = torch.stack([(labels[:, 0] == v).float() for v in VALUES], dim=1)
    logits = (onehot * 50).requires_grad_()
    loss = SoftDiceLoss()(logits, labels)
    assert loss.item() == pytest.approx(0.0, abs=1e-4)
    wrong = (torch.randn(1, 4, 6, 6, 6)).requires_grad_()
    SoftDiceLoss()(wrong, labels).backward()
    assert wrong.grad.abs().sum() > 0


def test_background_is_ignored():
    labels = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 4, 4, 4, 4)
    logits[:, 0] = 10  # confident, correct background
    # no foreground anywhere: each foreground Dice is smooth / (tiny + smooth) close to 1
    assert SoftDiceLoss(smooth=1.0)(logits, labels).item() < 0.01
    with_bg = SoftDiceLoss(smooth=1.0, include_background=True)(logits, labels)
    assert with_bg.item() < 0.01


def test_ce_weight_adds_cross_entropy():
    logits = torch.randn(2, 4, 5, 5, 5)
    labels = torch.tensor(VALUES)[torch.randint(0, 4, (2, 1, 5, 5, 5))]
    indices = torch.searchsorted(torch.tensor(VALUES), labels[:, 0])
    expected = SoftDiceLoss()(logits, labels) + 0.5 * torch.nn.functional.cross_entropy(logits, indices)
    assert SoftDiceLoss(ce_weight=0.5)(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"smooth": -1}, "smooth"), ({"temperature": 0}, "temperature"), ({"ce_weight": -0.1}, "ce_weight")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(RobustsegError, match=match):
        SoftDiceLoss(**kwargs)


def test_wrong_channel_count():
    with pytest.raises(RobustsegError, match="channels"):
        SoftDiceLoss()(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4))


def test_non_brats_labels():
    with pytest.raises(RobustsegError, match=r"\[3\]"):
        SoftDiceLoss()(torch.zeros(1, 4, 4, 4), torch.full((1, 1, 4, 4), 3))
