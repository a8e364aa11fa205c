"""Tests for :mod:`common.certify.bounds`: the Clopper-Pearson lower bound and the one-sided binomial test against
their definitions, and their duality."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import beta, binom, binomtest

from common.certify import binomial_p_values, clopper_pearson_lower
from common.errors import RobustsegError

CASES = [(0, 10, 0.05), (1, 10, 0.05), (7, 10, 0.01), (10, 10, 0.05), (95, 100, 1e-6), (100, 100, 1e-9), (3, 5, 0.3)]


@pytest.mark.parametrize("k, n, alpha", CASES)
def test_clopper_pearson_matches_its_formula(k, n, alpha):
    """Transcription (Clopper & Pearson 1934): the lower bound is the alpha quantile of Beta(k, n - k + 1), 0 at k=0."""
    expected = 0.0 if k == 0 else beta.ppf(alpha, k, n - k + 1)
    assert float(clopper_pearson_lower(torch.tensor([k]), n, alpha)) == pytest.approx(expected, rel=1e-12, abs=0)


@pytest.mark.parametrize("k, n, alpha", [c for c in CASES if c[0] > 0])
def test_clopper_pearson_is_where_the_tail_equals_alpha(k, n, alpha):
    """Its definition: at p = p_lower, seeing k or more successes has probability alpha, P(X >= k) = alpha."""
    p_lower = float(clopper_pearson_lower(torch.tensor([k]), n, alpha))
    assert binom.sf(k - 1, n, p_lower) == pytest.approx(alpha, rel=1e-6)


@pytest.mark.parametrize("n, tau", [(10, 0.5), (100, 0.75), (37, 0.9), (1, 0.5)])
def test_p_values_match_scipy_binomtest(n, tau):
    counts = torch.arange(n + 1)
    expected = [binomtest(k, n, tau, alternative="greater").pvalue for k in range(n + 1)]
    assert binomial_p_values(counts, n, tau).tolist() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n, alpha, tau", [(100, 1e-3, 0.75), (50, 0.05, 0.5), (200, 1e-8, 0.6)])
def test_the_bound_and_the_test_are_duals(n, alpha, tau):
    """lower(k, n, alpha) >= tau exactly when the test of p <= tau rejects at alpha (what lets Bonferroni radii and
    Bonferroni p-values certify the same voxels)."""
    counts = torch.arange(n + 1)
    assert torch.equal(clopper_pearson_lower(counts, n, alpha) >= tau, binomial_p_values(counts, n, tau) <= alpha)


def test_shape_and_device_are_kept():
    counts = torch.randint(0, 11, (2, 1, 3, 4))
    assert clopper_pearson_lower(counts, 10, 0.05).shape == counts.shape
    assert binomial_p_values(counts, 10, 0.5).dtype == torch.float64


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: clopper_pearson_lower(torch.tensor([1]), 10, 0.0), "alpha must be a finite number in"),
        (lambda: clopper_pearson_lower(torch.tensor([1]), 10, 1.5), "alpha must be a finite number in"),
        (lambda: clopper_pearson_lower(torch.tensor([1]), 0, 0.05), "n must be an integer >= 1"),
        (lambda: clopper_pearson_lower(torch.tensor([11]), 10, 0.05), r"successes must lie in \[0, 10\]"),
        (lambda: binomial_p_values(torch.tensor([1]), 10, 1.0), "tau must be a finite number in"),
        (lambda: binomial_p_values(torch.tensor([-1]), 10, 0.5), r"successes must lie in \[0, 10\]"),
    ],
)
def test_bad_arguments_raise_one_line(call, match):
    with pytest.raises(RobustsegError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
