"""DistillationDiceLoss == the paper's eqs. 4 and 7, computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.errors import RobustsegError
from common.losses import DistillationDiceLoss


def _softmax_t(z: np.ndarray, temperature: float) -> np.ndarray:
    """Eq. 4 over the class axis 1."""
    z = z / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _hand_eq7(
    student: np.ndarray, teacher: np.ndarray, temperature: float, smooth: float, background: bool,
    teacher_temperature: float | None = None,
) -> float:
    """Eq. 7 with numpy loops: 1 - mean over samples and (foreground) classes of the soft Dice of F^d and F."""
    p = _softmax_t(student, temperature)
    q = _softmax_t(teacher, temperature if teacher_temperature is None else teacher_temperature)
    dice = []
    for b in range(student.shape[0]):
        for i in range(0 if background else 1, student.shape[1]):
            dice.append((2 * (p[b, i] * q[b, i]).sum() + smooth) / (p[b, i].sum() + q[b, i].sum() + smooth))
    return 1.0 - float(np.mean(dice))


@pytest.mark.parametrize("shape", [(2, 4, 5, 6, 7), (3, 4, 8, 8)])
@pytest.mark.parametrize("temperature", [1.0, 20.0, 5000.0])
@pytest.mark.parametrize("smooth", [1e-5, 1.0])
@pytest.mark.parametrize("background", [False, True])
def test_matches_hand_computation(shape, temperature, smooth, background):
    rng = np.random.default_rng(0)
    # logits on the scale a student trained at T has: T times those of an ordinary network
    student = rng.normal(size=shape) * 3 * temperature
    teacher = rng.normal(size=shape) * 3 * temperature
    loss = DistillationDiceLoss(temperature, smooth=smooth, include_background=background)
    got = loss(torch.tensor(student), torch.tensor(teacher))
    assert got.item() == pytest.approx(_hand_eq7(student, teacher, temperature, smooth, background), rel=1e-5)


def test_temperature_divides_both_logits():
    """Scaling both logits by T and dividing inside the loss by T changes nothing."""
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 2, 4, 6, 6, 6, generator=generator)
    plain = DistillationDiceLoss(1.0)(student, teacher)
    assert DistillationDiceLoss(100.0)(100 * student, 100 * teacher).item() == pytest.approx(plain.item(), rel=1e-5)
    assert DistillationDiceLoss(100.0)(student, teacher).item() != pytest.approx(plain.item(), rel=1e-3)


def test_gradient_reaches_student_only():
    generator = torch.Generator().manual_seed(1)
    student = torch.randn(2, 4, 5, 5, 5, generator=generator).requires_grad_()
    teacher = torch.randn(2, 4, 5, 5, 5, generator=generator).requires_grad_()
    DistillationDiceLoss(20.0)(student, teacher).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_higher_agreement_lower_loss():
    generator = torch.Generator().manual_seed(2)
    teacher = 5 * torch.randn(1, 4, 6, 6, 6, generator=generator)
    loss = DistillationDiceLoss(1.0)
    close = loss(teacher + 0.1 * torch.randn(teacher.shape, generator=generator), teacher)
    far = loss(torch.randn(teacher.shape, generator=generator), teacher)
    assert close < far


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("inf")}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"temperature": 1.0, "smooth": -1e-5}, "smooth"),
        ({"temperature": 10.0, "teacher_temperature": 0.0}, "teacher_temperature"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(RobustsegError, match=match) as info:
        DistillationDiceLoss(**kwargs)
    assert "\n" not in str(info.value)


def test_shape_mismatch():
    with pytest.raises(RobustsegError, match="do not match"):
        DistillationDiceLoss(2.0)(torch.zeros(1, 4, 3, 3, 3), torch.zeros(1, 3, 3, 3, 3))


@pytest.mark.parametrize("teacher_temperature", [1.0, 7.0])
def test_teacher_temperature(teacher_temperature):
    rng = np.random.default_rng(3)
    student, teacher = rng.normal(size=(2, 4, 5, 5, 5)) * 4, rng.normal(size=(2, 4, 5, 5, 5)) * 4
    loss = DistillationDiceLoss(2.0, teacher_temperature=teacher_temperature)
    got = loss(torch.tensor(student), torch.tensor(teacher)).item()
    assert got == pytest.approx(_hand_eq7(student, teacher, 2.0, 1e-5, False, teacher_temperature), rel=1e-5)
    assert got != pytest.approx(_hand_eq7(student, teacher, 2.0, 1e-5, False), rel=1e-3)
