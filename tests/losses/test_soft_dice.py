"""SoftDiceLoss == the paper's eq. 5, computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from common.errors import RobustsegError
from common.losses import SoftDiceLoss

VALUES = (0, 1, 2, 4)


def _hand_eq5(
    logits: np.ndarray,
    labels: np.ndarray,
    smooth: float,
    temperature: float = 1.0,
    values: tuple[int, ...] = VALUES,
    include_background: bool = False,
) -> float:
    """Eq. 5 written out with numpy loops: 1 - mean over samples and foreground classes of the soft Dice."""
    z = logits / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dice = []
    for b in range(logits.shape[0]):
        for i, value in enumerate(values):
            if i == 0 and not include_background:
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


@pytest.mark.parametrize("values", [(0, 1), (0, 1, 2)], ids=["2classes", "3classes"])
@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (3, 8, 8)], ids=["3D", "2D"])  # (B, *spatial)
@pytest.mark.parametrize("include_background", [False, True])
def test_index_labels_of_a_k_class_task_match_hand_computation(values, shape, include_background):
    """A generic task whose labels are the channel indices 0..K-1: ``labels=range(K)``."""
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(shape[0], len(values), *shape[1:])) * 3
    labels = rng.integers(0, len(values), size=(shape[0], 1, *shape[1:]))
    loss = SoftDiceLoss(smooth=1e-5, include_background=include_background, labels=values)
    expected = _hand_eq5(logits, labels, 1e-5, values=values, include_background=include_background)
    assert loss(torch.tensor(logits), torch.tensor(labels)).item() == pytest.approx(expected, rel=1e-5)


def test_two_class_soft_dice_by_hand():
    """Two classes, four voxels, the foreground Dice written out: p1 = sigmoid(u1 - u0)."""
    logits = torch.tensor([[[0.0, 0.0, 2.0, -1.0], [0.0, 2.0, 0.0, 1.0]]])  # (1, 2, 4)
    labels = torch.tensor([[[0, 1, 0, 1]]])
    p1 = [0.5, 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-2.0))]
    y1 = [0, 1, 0, 1]
    dice = 2 * sum(p * y for p, y in zip(p1, y1)) / (sum(p1) + sum(y1))
    assert SoftDiceLoss(smooth=0.0, labels=(0, 1))(logits, labels).item() == pytest.approx(1 - dice, rel=1e-6)
    with pytest.raises(RobustsegError, match=r"logits: 2 channels, expected 3 \(one per label \[0, 1, 2\]\)"):
        SoftDiceLoss(labels=(0, 1, 2))(logits, labels)
    with pytest.raises(RobustsegError, match=r"labels: values \[2\] are not label values of the task"):
        SoftDiceLoss(labels=(0, 1))(logits, labels + 1)


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
