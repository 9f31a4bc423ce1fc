"""kADD-SHAP (Pelegrina et al. 2023): a 2-additive game fitted to paired coalitions, Shapley values read off it."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._paired import PairedDesign, PairedSample, kernel_weight, stratum_size
from longshap.hierarchy.estimators._stats import constrained_least_squares, student_scale
from longshap.hierarchy.estimators.base import register

INTERACTIONS_UP_TO = 64
"""Players up to which the pairwise (even) block is fitted too and its interactions returned in extras."""
RIDGE = 1e-6
"""Ridge on the pairwise terms, relative to their mean weighted square: only decides underdetermined fits."""


def _fit(data: PairedSample, interactions: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Weighted least squares of the 2-additive game f(S) = a0 + sum a_i x_i + sum_{i<j} a_ij x_i x_j, x = 2z - 1.

    Every evaluated coalition enters with its stratum's Shapley-kernel weight shared by
    the stratum's sampled pairs; f(empty) = v(empty) and f(N) = v(N) are imposed exactly.
    With paired coalitions the odd terms (x_i) and even terms (1, x_i x_j) are orthogonal
    in the sample (a pair's two rows have opposite x and equal x_i x_j), and each endpoint
    constraint falls in one block, so the fit splits: the odd block fits
    d(S) = v(S) - v(complement) ~ x.(2a) with sum(2a) = v(N) - v(empty); the even block
    (v(S) + v(complement)) / 2 - v(empty) ~ a0 + sum a_ij x_i x_j with f(N) + f(empty) fixed. The
    Shapley values of the fitted game are phi_i = 2 a_i (= m_i + sum_j m_ij / 2 in the
    Moebius form, m_ij = 4 a_ij); the even block changes no Shapley value, so it is
    ridge-regularised where pairs are fewer than its parameters and fitted only up to
    INTERACTIONS_UP_TO players, for the pairwise interactions m_ij it returns.

    Standard error of phi: the delta method on the odd block, pairs as clusters, per
    sampled stratum (finite-population corrected), HC1-rescaled by pairs over degrees of
    freedom (pairs - sampled strata - (n - 1)) and widened to Student-t; inf where those
    degrees of freedom or a sampled stratum's two pairs are missing; 0 when every stratum is
    enumerated.
    """
    n = data.n
    x = 2.0 * data.members - 1.0
    d = data.inside - data.outside
    counts = {s: int(np.sum(data.strata == s)) for s in np.unique(data.strata)}
    kernel = {s: kernel_weight(n, s) for s in counts}
    weights = np.array([kernel[s] / counts[s] for s in data.strata])
    gram = x.T @ (weights[:, None] * x)
    moment = x.T @ (weights[:, None] * d)
    values, m, _ = constrained_least_squares(gram, moment, data.total)
    residual = d - x @ values
    influence = (x @ m)[:, :, None] * residual[:, None, :]
    sampled = data.sampled
    pairs = sum(counts.get(s, 0) for s in sampled)
    dof = pairs - len(sampled) - (n - 1)
    if not sampled:
        stderr = np.zeros_like(values)
    elif dof < 1 or any(counts.get(s, 0) < 2 for s in sampled):
        stderr = np.full_like(values, np.inf)
    else:
        variance = np.zeros_like(values)
        for s in sampled:
            rows = influence[data.strata == s]
            kept = 1 - counts[s] / stratum_size(n, s)
            variance += kernel[s] ** 2 * kept * rows.var(axis=0, ddof=1) / counts[s]
        stderr = np.sqrt(variance * pairs / dof) * student_scale(dof)
    if not interactions:
        return values, stderr, None
    # Even block: unknowns (a0, a_ij); rows the pairs' mean level, constraint f(N) + f(empty) = v(N) + v(empty).
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
    matrix = np.zeros((n, n, values.shape[1]))
    matrix[upper[0], upper[1]] = 4 * pairwise
    matrix[upper[1], upper[0]] = 4 * pairwise
    return values, stderr, matrix


@register("kadd")
class KAdditive(PairedDesign):
    """Shapley values of a 2-additive game fitted by Shapley-kernel weighted least squares (kADD-SHAP).

    Coalitions are Leverage SHAP's distinct pairs (an equal share per coalition size,
    small strata enumerated), so all the budget goes to distinct coalitions. Because the
    pairs make the pairwise terms orthogonal to the singletons (see `_fit`), the Shapley
    values coincide with the paired kernel regression (`leverage`) on the same sample:
    the 2-additive model's extra parameters cost no degrees of freedom for phi and need
    no fallback below 1 + n + n(n-1)/2 evaluations. What the model adds are the pairwise
    Moebius interactions m_ij, returned as extras["interactions"] (n, n, k) for
    n <= INTERACTIONS_UP_TO (ridge-regularised; no standard errors).

    Games with outer contexts (Owen subgames) go to `kernel`, as with `leverage`.
    Budget and batches as `leverage`: 2 + 2 * pairs evaluations, at least one pair.
    """

    def fit(self, data: PairedSample, state: object) -> tuple[np.ndarray, np.ndarray]:
        values, stderr, _ = _fit(data, interactions=False)
        return values, stderr

    def extras(self, data: PairedSample, state: object) -> dict:
        if data.n > INTERACTIONS_UP_TO:
            return {}
        return {"interactions": _fit(data, interactions=True)[2]}
