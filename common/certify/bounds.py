"""Binomial bounds of randomized-smoothing certificates: the one-sided Clopper-Pearson lower confidence bound and the
exact one-sided binomial test, for many voxels at once.

Both come from :mod:`scipy.stats`; only the vectorisation is ours. A voxel's count ``k`` can take the ``n + 1`` values
``0..n`` only, so each function evaluates SciPy once per possible count and indexes the table: a 128^3 volume costs
``n + 1`` SciPy evaluations, not two million. The two are duals (Clopper & Pearson 1934): ``lower(k, n, a) >= tau``
exactly when ``p_value(k, n, tau) <= a``, which is why a certificate can be phrased as either (Cohen et al. 2019,
CERTIFY; Fischer et al. 2021, Algorithm 1).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import beta, binom
from torch import Tensor

from common.errors import RobustsegError
from common.utils.validation import check_int, check_number

__all__ = ["binomial_p_values", "clopper_pearson_lower"]


def _check_counts(successes: Tensor, trials: int) -> int:
    trials = check_int("n", trials, minimum=1, hint="the number of estimation samples")
    if successes.numel() and (int(successes.min()) < 0 or int(successes.max()) > trials):
        raise RobustsegError(
            f"successes must lie in [0, {trials}], got values in [{int(successes.min())}, {int(successes.max())}]."
        )
    return trials


def clopper_pearson_lower(successes: Tensor, trials: int, alpha: float) -> Tensor:
    """One-sided ``1 - alpha`` Clopper-Pearson lower confidence bound on a binomial proportion, per element.

    ``p_lower = Beta(alpha; k, n - k + 1)`` quantile, and 0 for ``k = 0`` (Clopper & Pearson 1934; the bound of
    Cohen et al. 2019, CERTIFY, ``LowerConfBound``), computed with :func:`scipy.stats.beta.ppf`.

    Args:
        successes: counts ``k`` (any shape, integer values in ``[0, trials]``).
        trials: the number of trials ``n``.
        alpha: the one-sided error level, in (0, 1).

    Returns:
        ``float64`` bounds with the shape of ``successes`` (and its device).

    Raises:
        RobustsegError: if ``trials < 1``, ``alpha`` is outside (0, 1) or a count is outside ``[0, trials]``.
    """
    trials = _check_counts(successes, trials)
    k = np.arange(trials + 1)
    a = check_number("alpha", alpha, 0, 1, min_inclusive=False, max_inclusive=False)
    table = np.where(k > 0, beta.ppf(a, np.maximum(k, 1), trials - k + 1), 0.0)
    return torch.as_tensor(table, dtype=torch.float64, device=successes.device)[successes.long()]


def binomial_p_values(successes: Tensor, trials: int, tau: float) -> Tensor:
    """p-values of the exact one-sided binomial test of ``H0: p <= tau`` against ``p > tau``, per element.

    ``P(X >= k)`` for ``X ~ Binomial(n, tau)``, i.e. ``scipy.stats.binomtest(k, n, tau, alternative="greater")``,
    computed as :func:`scipy.stats.binom.sf` ``(k - 1, n, tau)`` (SegCertify's ``BinPValue``, Fischer et al. 2021,
    Algorithm 1).

    Args:
        successes: counts ``k`` (any shape, integer values in ``[0, trials]``).
        trials: the number of trials ``n``.
        tau: the null hypothesis' proportion, in [0, 1).

    Returns:
        ``float64`` p-values with the shape of ``successes``.

    Raises:
        RobustsegError: if ``trials < 1``, ``tau`` is outside [0, 1) or a count is outside ``[0, trials]``.
    """
    trials = _check_counts(successes, trials)
    tau = check_number("tau", tau, 0, 1, max_inclusive=False)
    table = binom.sf(np.arange(trials + 1) - 1, trials, tau)
    return torch.as_tensor(table, dtype=torch.float64, device=successes.device)[successes.long()]
