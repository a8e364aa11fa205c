"""Paired statistics of the paper's tables: mean +- sd, Wilcoxon signed-rank test, Bonferroni correction.

Liu et al. 2021 ("Measuring Robustness", Tables 1-3) compare the per-subject Dice of two conditions (attack vs no
attack; defended vs undefended model) with a Wilcoxon signed-rank test, call a difference significant at
``p <= 0.05`` after a Bonferroni correction over the comparisons of a table, and report mean +- standard deviation.

Conventions fixed here (state them in a paper's methods):

* sd is the *sample* standard deviation (``ddof = 1``); it is NaN for a single value.
* The test is scipy's :func:`scipy.stats.wilcoxon`, two-sided, ``zero_method="wilcox"`` (pairs with a zero
  difference are dropped, as in the original test, scipy's default and R's ``wilcox.test``), ``method="auto"``
  (exact null distribution for up to 50 non-zero differences without ties, an exhaustive permutation
  distribution for up to 13 with ties, else the normal approximation with tie correction).
* When every difference is zero (e.g. both models predict identically) there is no evidence of a difference and
  ``p = 1`` (scipy would return NaN with a warning).
* Bonferroni: ``p_corrected = min(1, p * m)`` with ``m`` the number of comparisons in the table.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import wilcoxon

from common.errors import RobustsegError

__all__ = ["mean_sd", "wilcoxon_p", "paired_comparison", "bonferroni"]


def _as_vector(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise RobustsegError(f"{name} must be a non-empty 1-D sequence of numbers, got shape {array.shape}.")
    if np.isnan(array).any():
        raise RobustsegError(f"{name} holds NaN values; expected numbers only.")
    return array


def mean_sd(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof = 1``; NaN for one value) of ``values``.

    Args:
        values: a non-empty 1-D sequence of numbers.

    Returns:
        ``(mean, sd)``.

    Raises:
        RobustsegError: if ``values`` is empty, not 1-D, or holds NaN.
    """
    array = _as_vector("values", values)
    sd = float(np.std(array, ddof=1)) if array.size > 1 else float("nan")
    return float(np.mean(array)), sd


def wilcoxon_p(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of the paired samples ``a`` and ``b``.

    ``scipy.stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided", method="auto")``, except that
    ``p = 1`` when all differences ``a - b`` are zero (see the module docstring).

    Args:
        a: values of the first condition, one per subject.
        b: values of the second condition for the same subjects, in the same order.

    Returns:
        The p-value in [0, 1].

    Raises:
        RobustsegError: if ``a`` and ``b`` differ in length, are empty, or hold NaN.
    """
    x, y = _as_vector("a", a), _as_vector("b", b)
    if x.shape != y.shape:
        raise RobustsegError(f"a and b must be paired (same length), got {x.size} and {y.size} values.")
    if np.all(x == y):
        return 1.0
    result = wilcoxon(x, y, zero_method="wilcox", alternative="two-sided", method="auto")
    return float(result.pvalue)


def paired_comparison(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray
) -> tuple[float, float, float, float, float]:
    """Mean and sd of two paired samples and the Wilcoxon signed-rank p-value of their difference.

    Args:
        a: values of the first condition, one per subject.
        b: values of the second condition for the same subjects, in the same order.

    Returns:
        ``(mean_a, sd_a, mean_b, sd_b, p)`` with sample sds (``ddof = 1``) and the two-sided :func:`wilcoxon_p`.

    Raises:
        RobustsegError: if ``a`` and ``b`` differ in length, are empty, or hold NaN.

    Example::

        mean_clean, sd_clean, mean_fgsm, sd_fgsm, p = paired_comparison(dice_clean, dice_fgsm)
    """
    p = wilcoxon_p(a, b)
    mean_a, sd_a = mean_sd(a)
    mean_b, sd_b = mean_sd(b)
    return mean_a, sd_a, mean_b, sd_b, p


def bonferroni(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Bonferroni-corrected p-values: ``min(1, p * m)`` with ``m = len(pvalues)`` comparisons.

    Args:
        pvalues: the raw p-values of all comparisons of one table (may be empty).

    Returns:
        The corrected p-values, float64, same order.

    Raises:
        RobustsegError: if a p-value is NaN or outside [0, 1].
    """
    p = np.asarray(pvalues, dtype=np.float64).reshape(-1)
    if p.size and (np.isnan(p).any() or p.min() < 0 or p.max() > 1):
        raise RobustsegError(f"pvalues must lie in [0, 1], got {p.tolist()}.")
    return np.minimum(1.0, p * p.size)
