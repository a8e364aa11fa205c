from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import wilcoxon

from common.errors import RobustsegError
from common.metrics import bonferroni, mean_sd, paired_comparison, wilcoxon_p


@pytest.mark.parametrize("n", [6, 20, 80])
@pytest.mark.parametrize("with_ties", [False, True])
def test_wilcoxon_matches_scipy(n, with_ties):
    rng = np.random.default_rng(n)
    a = rng.uniform(0.5, 0.9, n)
    b = a - rng.normal(0.05, 0.1, n)
    if with_ties:
        b[:2] = a[:2]  # zero differences, dropped by zero_method="wilcox"
        a = np.round(a, 2)
        b = np.round(b, 2)
    expected = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided").pvalue
    assert wilcoxon_p(a, b) == pytest.approx(expected, rel=1e-12)


def test_wilcoxon_exact_small_sample_by_hand():
    # 6 pairs, all differences positive and distinct: W- = 0, exact two-sided p = 2 / 2**6
    a = np.array([0.9, 0.8, 0.85, 0.7, 0.75, 0.95])
    b = a - np.array([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
    assert wilcoxon_p(a, b) == pytest.approx(2 / 2**6)
    assert wilcoxon_p(b, a) == pytest.approx(2 / 2**6)


def test_all_zero_differences_give_p_one_without_warning():
    a = [0.5, 0.7, 1.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert wilcoxon_p(a, a) == 1.0


def test_paired_comparison():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(size=9), rng.uniform(size=9)
    mean_a, sd_a, mean_b, sd_b, p = paired_comparison(a, b)
    assert (mean_a, mean_b) == pytest.approx((a.mean(), b.mean()))
    assert sd_a == pytest.approx(np.sqrt(((a - a.mean()) ** 2).sum() / 8))  # sample sd, ddof = 1
    assert sd_b == pytest.approx(np.sqrt(((b - b.mean()) ** 2).sum() / 8))
    assert p == pytest.approx(wilcoxon(a, b).pvalue)


def test_mean_sd_single_value_has_nan_sd():
    mean, sd = mean_sd([0.4])
    assert mean == 0.4 and np.isnan(sd)


@pytest.mark.parametrize(
    "p, expected",
    [
        ([0.01, 0.02, 0.5], [0.03, 0.06, 1.0]),
        ([0.001], [0.001]),
        ([], []),
        ([0.2, 0.3, 0.0, 0.01], [0.8, 1.0, 0.0, 0.04]),
    ],
)
def test_bonferroni(p, expected):
    np.testing.assert_allclose(bonferroni(p), expected)


def test_unpaired_lengths_raise():
    with pytest.raises(RobustsegError, match="paired"):
        wilcoxon_p([0.1, 0.2], [0.1, 0.2, 0.3])


def test_empty_sample_raises():
    with pytest.raises(RobustsegError, match="non-empty"):
        mean_sd([])


def test_nan_sample_raises():
    with pytest.raises(RobustsegError, match="NaN"):
        wilcoxon_p([0.1, float("nan")], [0.2, 0.3])


def test_bonferroni_rejects_invalid_p():
    with pytest.raises(RobustsegError, match=r"\[0, 1\]"):
        bonferroni([0.5, 1.5])
