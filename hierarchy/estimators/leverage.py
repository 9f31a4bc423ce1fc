"""Leverage SHAP (Musco & Witter, ICLR 2025) over distinct paired coalitions, whole strata enumerated."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._paired import PairedDesign, PairedSample, kernel_weight, stratum_size
from longshap.hierarchy.estimators._stats import (
    constrained_least_squares,
    student_scale,
)
from longshap.hierarchy.estimators.base import register


def _fit(
    n: int, members: np.ndarray, strata: np.ndarray, complete: set[int], targets: np.ndarray, complements: np.ndarray, total: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified Shapley-kernel regression and its delta-method standard error.

    Each stratum s carries the Shapley kernel's total weight of its sizes, shared
    equally by its rows, so the fit is the exact KernelSHAP objective with every sampled
    stratum replaced by the mean of its sample. Linearising the constrained solution,
    phi_hat - phi ~ sum_s W_s mean_{j in s} psi_j with psi_j = M (b_j - A_j phi); strata
    enumerated whole contribute no variance, sampled ones W_s^2 (1 - c_s/N_s) var(psi)/c_s
    (finite population correction: drawn without replacement), rescaled by pairs / dof
    for the fitted parameters (HC1) and widened to Student-t. A sampled stratum with
    fewer than two pairs, or too few pairs overall for the n - 1 free parameters, leaves
    the error undetermined: inf.
    """
    inside = members.astype(np.float64)
    outside = 1.0 - inside
    present = np.unique(strata)
    count = {s: int(np.sum(strata == s)) for s in present}
    kernel = {s: kernel_weight(n, s) for s in present}
    weights = np.array([kernel[s] / count[s] for s in strata])[:, None]
    gram = (inside.T @ (weights * inside) + outside.T @ (weights * outside)) / 2
    moment = (inside.T @ (weights * targets) + outside.T @ (weights * complements)) / 2
    values, m, _ = constrained_least_squares(gram, moment, total)
    influence = (
        (inside @ m)[:, :, None] * (targets - inside @ values)[:, None, :]
        + (outside @ m)[:, :, None] * (complements - outside @ values)[:, None, :]
    ) / 2
    sampled = [s for s in range(1, n // 2 + 1) if s not in complete]
    pairs = sum(count.get(s, 0) for s in sampled)
    dof = pairs - len(sampled) - (n - 1)
    if not sampled:
        return values, np.zeros_like(values)
    if dof < 1 or any(count.get(s, 0) < 2 for s in sampled):
        return values, np.full_like(values, np.inf)
    variance = np.zeros_like(values)
    for s in sampled:
        rows = influence[strata == s]
        kept = 1 - count[s] / stratum_size(n, s)
        variance += kernel[s] ** 2 * kept * rows.var(axis=0, ddof=1) / count[s]
    return values, np.sqrt(variance * pairs / dof) * student_scale(dof)


@register("leverage")
class Leverage(PairedDesign):
    """Shapley values by paired, stratified leverage-score sampling and exact kernel regression.

    Musco & Witter (ICLR 2025) show the Shapley regression's leverage scores are equal
    across coalition sizes, so sampling sizes uniformly (rather than by kernel weight,
    as KernelSHAP does) gives the regression's guarantees with O(n log n) samples. Here
    each sample is a pair (S, complement) (paired sampling, as in Covert & Lee), pairs
    are distinct (drawn without replacement within a size), and a size whose share of
    the budget would cover all its pairs is enumerated whole, so small strata (the
    leave-one-out and leave-one-in coalitions first) are exact and the remaining budget
    goes to the large middle strata. The fit imposes sum(phi) = v(N) - v(empty).

    Games with outer contexts (Owen subgames) draw a context per sample group, which
    strata enumeration cannot serve: those go to `kernel` (the result's `method` says so).

    Budget: v(empty) and v(N), then pairs of two evaluations each: every evaluation is
    spent but the last one of an odd budget; at least one pair. Batches (enumerated
    strata first, then the sampled pairs in random order, growing to a quarter of the
    pairs so far) give progress reports and stop early at `target_stderr`.
    """

    def fit(self, data: PairedSample, state: object) -> tuple[np.ndarray, np.ndarray]:
        return _fit(data.n, data.members, data.strata, data.complete, data.inside, data.outside, data.total)
