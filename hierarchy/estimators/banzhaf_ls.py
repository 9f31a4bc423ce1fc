"""Banzhaf values as least-squares coefficients over uniform coalitions (Hammer & Holzman 1992)."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._stats import student_scale
from longshap.hierarchy.estimators.banzhaf import Banzhaf
from longshap.hierarchy.estimators.base import register


def _ordinary_least_squares(members: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes of v on (z - 1/2) with an intercept, and their heteroskedasticity-robust stderr.

    Under uniform coalitions E[(z - 1/2)(z - 1/2)'] = I/4, so the population slopes are
    4 E[(z_i - 1/2) v] = E[v | i in] - E[v | i out]: the Banzhaf values. The sample fit
    uses every coalition for every player and removes the part of each player's
    contrast explained by the others' presence, the variance that plain maximum sample
    reuse keeps. Errors: the sandwich (X'X)^-1 (sum x x' e^2) (X'X)^-1, rescaled by
    m / (m - p) and widened to Student-t with m - p degrees of freedom; inf while the
    m samples cannot pin down p = n + 1 coefficients with room to spare.
    """
    rows, n = members.shape
    design = np.hstack([np.ones((rows, 1)), members - 0.5])
    dof = rows - (n + 1)
    gram = design.T @ design
    if dof < 1 or np.linalg.matrix_rank(gram) <= n:
        coefficients = np.linalg.lstsq(design, outputs, rcond=None)[0]
        return coefficients[1:], np.full_like(coefficients[1:], np.inf)
    inverse = np.linalg.inv(gram)
    coefficients = inverse @ design.T @ outputs
    residuals = outputs - design @ coefficients
    leverage_rows = design @ inverse  # (m, p): row j of (X'X)^-1 x_j
    variance = np.einsum("mp,mk->pk", leverage_rows**2, residuals**2) * rows / dof
    return coefficients[1:], np.sqrt(variance[1:]) * student_scale(dof)


@register("banzhaf_ls")
class BanzhafLeastSquares(Banzhaf):
    """Banzhaf values by regression on uniform random coalitions (maximum sample reuse plus regression).

    The same samples as `banzhaf` (every coalition a Bernoulli(1/2) subset with its own
    outer context, informing all players at once), fitted by least squares instead of
    differences of means, which cuts the error several-fold on games with strong
    players (their presence no longer adds noise to everyone else's contrast).

    Budget: one evaluation per sample at most (repeats are memoised); batches
    (2(n + 1) samples, growing to a quarter of the samples so far) are capped by the
    remaining budget, which is spent exactly; at most 4 * budget samples (binds only on
    games with few coalitions).
    """

    def fit(self, members: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _ordinary_least_squares(members.astype(np.float64), outputs)
