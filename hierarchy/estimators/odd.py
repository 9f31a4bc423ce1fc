"""Odd-part sparse interaction regression (after OddSHAP, 2026) on Leverage SHAP's paired strata.

With x = 2z - 1 (+-1 per player) every game is a sum of parities chi_T(x) = prod_{i in T} x_i.
A parity of even order gives every player zero (its value at N and at the empty set agree, and
its players are symmetric), one of odd order |T| gives each of its players 2 / |T| of its
coefficient. So the Shapley values depend only on the odd part of the game, and a pair
(S, complement) measures that part exactly: d(S) = v(S) - v(complement) = 2 v_odd(S), with no
even term left to fit. Writing d(x) = sum_i theta_i x_i + sum_{|T| odd > 1} beta_T chi_T(x),

    phi_i = theta_i + sum over T containing i of beta_T / |T|,

and the efficiency constraint is d(N) = v(N) - v(empty) = sum theta + sum beta.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np

from longshap.hierarchy.estimators._paired import PairedDesign, PairedSample, kernel_weight, stratum_size
from longshap.hierarchy.estimators._stats import constrained_least_squares, student_scale
from longshap.hierarchy.estimators.base import register

TOP_PLAYERS = 20
"""Third-order candidates are the triples of the players with the largest main effects (all of them up to 20 players)."""
FRACTIONS = (0.0, 0.125, 0.25, 0.5, 0.75)
"""Terms kept, as fractions of the spare pairs (those left after the main effects, the strata and MIN_SPARE): the grid cross-validation picks from."""
FOLDS = 4
"""Cross-validation folds choosing how many screened terms to keep."""
MIN_SPARE = 4
"""Pairs always left to estimate the residual spread from."""
FLOAT_FLOOR = 1e-11
"""Smallest standard error, relative to the largest value: a fit that is exact up to rounding still has rounding."""


def triples(players: np.ndarray) -> np.ndarray:
    """All triples (C, 3) of the given players, as sorted player indices."""
    chosen = sorted(int(p) for p in players)
    return np.array(list(combinations(chosen, 3)), dtype=int).reshape(-1, 3)


def parities(x: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """chi_T(x) (m, len(terms)) for terms given as rows of player indices."""
    if len(terms) == 0:
        return np.zeros((len(x), 0))
    return np.prod(x[:, terms], axis=2)


def to_shapley(n: int, theta: np.ndarray, terms: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """phi (n,) of d = x.theta + sum beta_T chi_T: each odd term split equally among its players."""
    phi = theta.copy()
    for term, coefficient in zip(terms, beta):
        phi[term] += coefficient / len(term)
    return phi


def design_weights(n: int, strata: np.ndarray) -> np.ndarray:
    """Each pair's share of its stratum's Shapley-kernel weight, as in `leverage`."""
    counts = {int(s): int(np.sum(strata == s)) for s in np.unique(strata)}
    return np.array([kernel_weight(n, int(s)) / counts[int(s)] for s in strata])


def solve(features: np.ndarray, d: np.ndarray, weights: np.ndarray, total: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients of d ~ features under sum(coefficients) = total, and the M of `constrained_least_squares`.

    Every parity is 1 at x = (1, ..., 1), so sum(coefficients) = total is d(N) = v(N) - v(empty).
    A (near) singular system gets `constrained_least_squares`' small ridge, and only then.
    """
    gram = features.T @ (weights[:, None] * features)
    moment = features.T @ (weights * d)
    coefficients, m, _ = constrained_least_squares(gram, moment[:, None], np.array([total]))
    return coefficients[:, 0], m


def screen(x: np.ndarray, d: np.ndarray, weights: np.ndarray, total: float, candidates: np.ndarray, limit: int) -> np.ndarray:
    """Candidate order, most promising first: orthogonal matching pursuit on the weighted residual.

    A term the current model leaves unexplained shows up in its residual: candidates are scored
    by their weighted correlation with it, the best are added, the model is refitted and the
    rest rescored, until `limit` terms are ranked (the others follow in their last scores'
    order). Terms are added in blocks of a quarter of those already in, so a ranking of p
    terms costs O(log p) fits. Effect hierarchy (triples of strong players matter most)
    already shaped the candidate list.
    """
    features = parities(x, candidates)
    norms = np.sqrt(np.maximum(features.T**2 @ weights, 1e-300))
    chosen: list[int] = []
    free = np.ones(len(candidates), dtype=bool)
    while True:
        coefficients, _ = solve(np.hstack([x, features[:, chosen]]), d, weights, total)
        residual = d - np.hstack([x, features[:, chosen]]) @ coefficients
        score = np.where(free, np.abs(features.T @ (weights * residual)) / norms, -np.inf)
        ranked = np.argsort(-score, kind="stable")
        if len(chosen) >= limit or not free.any():
            return np.array([*chosen, *ranked[: int(free.sum())]], dtype=int)
        block = ranked[: max(1, min(len(chosen) // 4, limit - len(chosen)))]
        chosen.extend(int(c) for c in block)
        free[block] = False


@dataclass
class OddModel:
    """A fitted odd expansion: main effects theta and the kept terms with their coefficients."""

    theta: np.ndarray
    terms: np.ndarray
    beta: np.ndarray
    m: np.ndarray
    """The constrained solution's M (for the delta method)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return x @ self.theta + parities(x, self.terms) @ self.beta

    def shapley(self) -> np.ndarray:
        return to_shapley(len(self.theta), self.theta, self.terms, self.beta)


def fit_odd(x: np.ndarray, d: np.ndarray, weights: np.ndarray, total: float, terms: np.ndarray) -> OddModel:
    """Main effects plus the given parities, fitted under the efficiency constraint."""
    n = x.shape[1]
    coefficients, m = solve(np.hstack([x, parities(x, terms)]), d, weights, total)
    return OddModel(coefficients[:n], terms, coefficients[n:], m)


def candidates_for(x: np.ndarray, d: np.ndarray, weights: np.ndarray, total: float) -> np.ndarray:
    """Triples of the TOP_PLAYERS players with the largest main effects (every triple for small games)."""
    n = x.shape[1]
    if n < 3:
        return np.zeros((0, 3), dtype=int)
    theta, _ = solve(x, d, weights, total)
    return triples(np.argsort(-np.abs(theta), kind="stable")[: min(n, TOP_PLAYERS)])


def _press(features: np.ndarray, d: np.ndarray, weights: np.ndarray, total: float) -> float:
    """Leave-one-out weighted squared error of a fit, r_j / (1 - h_j) with h_j the pair's leverage."""
    coefficients, m = solve(features, d, weights, total)
    hat = weights * np.einsum("pi,ij,pj->p", features, m, features)
    loo = (d - features @ coefficients) / np.maximum(1.0 - hat, 1e-6)
    return float(np.sum(weights * loo**2))


def choose_terms(
    x: np.ndarray, d: np.ndarray, weights: np.ndarray, total: float, labels: np.ndarray, strata: int, candidates: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """The parities to keep: the grid size with the lowest cross-validated weighted error of d.

    Sizes are fractions of the spare pairs (pairs less main effects, sampled `strata` and
    MIN_SPARE); `labels` are the pairs' strata.
    Folds are dealt within strata in random order; each fold's held-out pairs are predicted by
    a model screened and fitted on the other folds, so the choice pays for its own screening
    (leave-one-out on a ranking screened on every pair would not, and keeps too many terms).
    When every candidate fits in the spare pairs, the full model, which selects nothing, is
    scored by its exact leave-one-out error (PRESS) against the same per-pair scale: it wins
    where the game is a third-order one and is then recovered exactly. Ties go to fewer terms.
    """
    n, pairs = x.shape[1], len(d)
    spare = pairs - n - strata - MIN_SPARE
    if spare < 4 or len(candidates) == 0:
        return candidates[:0]
    folds = np.zeros(pairs, dtype=int)
    for s in np.unique(labels):
        rows = np.flatnonzero(labels == s)
        folds[rows] = rng.permutation(np.arange(len(rows)) % FOLDS)
    errors = np.zeros(len(FRACTIONS))
    for fold in range(FOLDS):
        train, test = folds != fold, folds == fold
        if not np.any(test):
            continue
        train_spare = int(np.sum(train)) - n - strata - MIN_SPARE
        counts = [int(min(len(candidates), max(0, round(fraction * train_spare)))) for fraction in FRACTIONS]
        order = screen(x[train], d[train], weights[train], total, candidates, max(counts))
        for index, fraction in enumerate(FRACTIONS):
            terms = candidates[order[: counts[index]]]
            coefficients, _ = solve(np.hstack([x[train], parities(x[train], terms)]), d[train], weights[train], total)
            predicted = np.hstack([x[test], parities(x[test], terms)]) @ coefficients
            errors[index] += np.sum(weights[test] * (d[test] - predicted) ** 2)
    best = int(np.argmin(errors + 1e-9 * np.abs(errors).max() * np.arange(len(errors))))
    if len(candidates) <= spare:
        if _press(np.hstack([x, parities(x, candidates)]), d, weights, total) < errors[best]:
            return candidates
    count = int(min(len(candidates), round(FRACTIONS[best] * spare)))
    return candidates[screen(x, d, weights, total, candidates, count)[:count]]


def stderr_of(data: PairedSample, x: np.ndarray, d: np.ndarray, weights: np.ndarray, model: OddModel) -> np.ndarray:
    """Delta-method standard error of the fitted model's Shapley values, with leave-one-out (HC3) residuals.

    phi = L gamma for the coefficients gamma, so a pair's influence is L M f_j r_j; strata are
    sampled without replacement (finite population correction), enumerated ones add nothing.
    Residuals are divided by 1 - h_j, the pair's leverage, because a model with many terms fits
    its own pairs too well; the variance is widened to Student-t on the pairs left after the
    parameters and strata, and scaled by pairs / dof as well (HC1: the kept terms were picked
    for fitting these pairs, which HC3 alone undercharged). Too few of them (or a sampled stratum with one pair) leave it
    undetermined: inf. The selection of terms is not accounted for beyond that.
    """
    n = data.n
    features = np.hstack([x, parities(x, model.terms)])
    lift = np.zeros((n, features.shape[1]))
    lift[:, :n] = np.eye(n)
    for column, term in enumerate(model.terms):
        lift[term, n + column] = 1.0 / len(term)
    projected = features @ (lift @ model.m).T  # (P, n): L M f_j
    residual = d - features @ np.concatenate([model.theta, model.beta])
    hat = weights * np.einsum("pi,ij,pj->p", features, model.m, features)
    residual = residual / np.maximum(1.0 - hat, 1e-3)
    sampled = data.sampled
    if not sampled:
        return np.zeros(n)
    counts = {s: int(np.sum(data.strata == s)) for s in sampled}
    pairs = sum(counts.values())
    dof = pairs - len(sampled) - (n - 1 + len(model.terms))
    if dof < 1 or any(c < 2 for c in counts.values()):
        return np.full(n, np.inf)
    variance = np.zeros(n)
    for s in sampled:
        rows = data.strata == s
        influence = projected[rows] * residual[rows, None]
        kept_share = 1 - counts[s] / stratum_size(n, s)
        variance += kernel_weight(n, s) ** 2 * kept_share * influence.var(axis=0, ddof=1) / counts[s]
    return np.sqrt(variance * pairs / dof) * student_scale(dof)


@register("odd")
class Odd(PairedDesign):
    """Shapley values read exactly off a sparse odd expansion of the game, fitted to paired coalitions.

    Sampling is Leverage SHAP's (distinct pairs, an equal share per coalition size, small
    strata enumerated). Each pair gives the odd part of the game at one point, exactly; the
    fit is Shapley-kernel weighted least squares of d(S) on the main effects plus the
    third-order parities that screening ranks first (see `screen`), under the efficiency
    constraint. How many to keep is chosen by 4-fold cross-validation over a grid of fractions
    of the spare pairs (`choose_count`): a game with few interactions keeps few, a dense
    third-order game keeps all of them once the pairs allow it, and its values are then exact.
    With no term kept the fit is `leverage`'s. Standard errors: `stderr_of`.

    Games with outer contexts (Owen subgames) go to `kernel`, as with `leverage`.
    Budget and batches as `leverage`: 2 + 2 * pairs evaluations, at least one pair.
    """

    def prepare(self, n: int, rng: np.random.Generator) -> np.random.Generator:
        return np.random.default_rng(rng.integers(2**63))

    def fit(self, data: PairedSample, state: object) -> tuple[np.ndarray, np.ndarray]:
        assert isinstance(state, np.random.Generator)
        x = 2.0 * data.members - 1.0
        weights = design_weights(data.n, data.strata)
        differences = data.inside - data.outside
        values = np.zeros((data.n, differences.shape[1]))
        stderr = np.zeros_like(values)
        for column in range(differences.shape[1]):
            d = differences[:, column]
            total = float(data.total[column])
            candidates = candidates_for(x, d, weights, total)
            model = fit_odd(x, d, weights, total, choose_terms(x, d, weights, total, data.strata, len(data.sampled), candidates, state))
            values[:, column] = model.shapley()
            stderr[:, column] = np.maximum(stderr_of(data, x, d, weights, model), FLOAT_FLOOR * np.abs(values[:, column]).max())
        return values, stderr
