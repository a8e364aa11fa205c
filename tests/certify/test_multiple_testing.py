"""Tests for :mod:`common.certify.multiple_testing`: Holm's and Bonferroni's procedures against direct
transcriptions of their definitions."""

from __future__ import annotations

import pytest
import torch

from common.certify import bonferroni, holm, reject
from common.errors import RobustsegError


def holm_transcribed(p: list[float], alpha: float) -> list[bool]:
    """Holm (1979): walk the p-values in increasing order; reject while p_(j) <= alpha / (m - j + 1), then stop."""
    m = len(p)
    order = sorted(range(m), key=lambda i: p[i])
    out = [False] * m
    for j, i in enumerate(order, start=1):
        if p[i] > alpha / (m - j + 1):
            break
        out[i] = True
    return out


@pytest.mark.parametrize(
    "p, alpha, expected",
    [
        # sorted: 0.005 <= 0.05/4, 0.01 <= 0.05/3, 0.03 > 0.05/2: stop
        ([0.01, 0.04, 0.03, 0.005], 0.05, [True, False, False, True]),
        ([0.01, 0.02, 0.03], 0.1, [True, True, True]),  # 0.01 <= 0.1/3, 0.02 <= 0.1/2, 0.03 <= 0.1
        ([0.2, 0.001], 0.05, [False, True]),
        ([0.5], 0.05, [False]),
        ([0.01, 0.01, 0.5], 0.05, [True, True, False]),  # ties: 0.01 <= 0.05/3 and 0.01 <= 0.05/2
    ],
)
def test_holm_on_hand_worked_examples(p, alpha, expected):
    assert holm(torch.tensor(p, dtype=torch.float64), alpha).tolist() == expected == holm_transcribed(p, alpha)


@pytest.mark.parametrize("seed", range(5))
def test_holm_matches_its_transcription_on_random_p_values_with_ties(seed):
    generator = torch.Generator().manual_seed(seed)
    p = (torch.rand(60, generator=generator, dtype=torch.float64) ** 4).mul(200).round().div(200)  # many ties
    p = p.reshape(3, 4, 5)
    assert holm(p, 0.05).reshape(-1).tolist() == holm_transcribed(p.reshape(-1).tolist(), 0.05)


@pytest.mark.parametrize("seed", range(3))
def test_bonferroni_is_its_formula_and_holm_rejects_at_least_as_much(seed):
    p = torch.rand(100, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) ** 6
    assert torch.equal(bonferroni(p, 0.05), p <= 0.05 / 100)
    assert bool((holm(p, 0.05) | ~bonferroni(p, 0.05)).all())  # Bonferroni's rejections are Holm's too


def test_reject_looks_up_the_correction():
    p = torch.tensor([0.01, 0.04, 0.03, 0.005], dtype=torch.float64)
    assert torch.equal(reject(p, 0.05, "holm"), holm(p, 0.05))
    assert torch.equal(reject(p, 0.05, "bonferroni"), bonferroni(p, 0.05))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: holm(p, 0.0), "alpha must be a finite number in"),
        (lambda p: bonferroni(p, 1.0), "alpha must be a finite number in"),
        (lambda p: reject(p, 0.05, "hochberg"), "correction must be one of"),
    ],
)
def test_bad_arguments_raise_one_line(call, match):
    with pytest.raises(RobustsegError, match=match) as info:
        call(torch.tensor([0.1]))
    assert "\n" not in str(info.value)
