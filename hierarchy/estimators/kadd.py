"""kADD-SHAP (Pelegrina et al. 2023): a 2-additive game fitted to paired coalitions, Shapley values read off it."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._paired import PairedSample, kernel_weight
from longshap.hierarchy.estimators.base import register
from longshap.hierarchy.estimators.leverage import Leverage

INTERACTIONS_UP_TO = 64
"""Players up to which the pairwise (even) block is fitted too and its interactions returned in extras."""
RIDGE = 1e-6
"""Ridge on the pairwise terms, relative to their mean weighted square: only decides underdetermined fits."""


def _interactions(data: PairedSample) -> np.ndarray:
    """Pairwise Moebius interactions m_ij (n, n, k) of the 2-additive game fitted to the pairs.

    The 2-additive game is f(S) = a0 + sum a_i x_i + sum_{i<j} a_ij x_i x_j, x = 2z - 1,
    fitted by weighted least squares, every evaluated coalition with its stratum's
    Shapley-kernel weight shared by the stratum's sampled pairs, f(empty) = v(empty) and
    f(N) = v(N) imposed exactly. With paired coalitions the odd terms (x_i) and the even
    terms (1, x_i x_j) are orthogonal in the sample (a pair's two rows have opposite x and
    equal x_i x_j), and each endpoint constraint falls in one block, so the fit splits. The
    odd block fits d(S) = v(S) - v(complement) ~ x.(2a) with sum(2a) = v(N) - v(empty):
    that is the paired kernel regression `leverage` runs, and the Shapley values of the
    fitted game, phi_i = 2 a_i (= m_i + sum_j m_ij / 2), are its values. This function
    fits the even block, (v(S) + v(complement)) / 2 - v(empty) ~ a0 + sum a_ij x_i x_j with
    f(N) + f(empty) fixed, ridge-regularised where pairs are fewer than its parameters;
    m_ij = 4 a_ij.
    """
    n = data.n
    x = 2.0 * data.members - 1.0
    counts = {s: int(np.sum(data.strata == s)) for s in np.unique(data.strata)}
    weights = np.array([kernel_weight(n, s) / counts[s] for s in data.strata])
    upper = np.triu_indices(n, 1)
    products = (x[:, :, None] * x[:, None, :])[:, upper[0], upper[1]]
    design = np.hstack([np.ones((len(x), 1)), products])
    level = (data.inside + data.outside) / 2
    root = np.sqrt(weights)[:, None]
    penalty = np.sqrt(RIDGE * max(np.sum((design[:, 1:] * root) ** 2), 1e-300) / max(1, products.shape[1]))
    # f(N) + f(empty) = 2 (a0 + sum a_ij): eliminate a0 = total / 2 - sum a_ij, relative to v(empty).
    reduced = design[:, 1:] - design[:, :1]
    target = level - data.total / 2
    stacked = np.vstack([reduced * root, penalty * np.eye(reduced.shape[1])])
    rhs = np.vstack([target * root, np.zeros((reduced.shape[1], target.shape[1]))])
    pairwise = np.linalg.lstsq(stacked, rhs, rcond=None)[0]
    matrix = np.zeros((n, n, target.shape[1]))
    matrix[upper[0], upper[1]] = 4 * pairwise
    matrix[upper[1], upper[0]] = 4 * pairwise
    return matrix


@register("kadd")
class KAdditive(Leverage):
    """Shapley values of a 2-additive game fitted by Shapley-kernel weighted least squares (kADD-SHAP).

    Coalitions are Leverage SHAP's distinct pairs (an equal share per coalition size,
    small strata enumerated), so all the budget goes to distinct coalitions. Because the
    pairs make the pairwise terms orthogonal to the singletons (see `_interactions`), the
    Shapley values are the paired kernel regression's (`leverage`, whose fit and standard
    errors it runs) on the same sample:
    the 2-additive model's extra parameters cost no degrees of freedom for phi and need
    no fallback below 1 + n + n(n-1)/2 evaluations. What the model adds are the pairwise
    Moebius interactions m_ij, returned as extras["interactions"] (n, n, k) for
    n <= INTERACTIONS_UP_TO (ridge-regularised; no standard errors).

    Games with outer contexts (Owen subgames) go to `kernel`, as with `leverage`.
    Budget and batches as `leverage`: 2 + 2 * pairs evaluations, at least one pair.
    """

    def extras(self, data: PairedSample, state: object) -> dict:
        return {} if data.n > INTERACTIONS_UP_TO else {"interactions": _interactions(data)}
