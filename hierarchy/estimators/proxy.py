"""Proxy plus residual (after ProxySHAP and RegressionMSR, 2026) on Leverage SHAP's paired strata.

Fit a proxy of the game on some of the sampled coalitions, take the proxy's Shapley values
exactly, and correct them by a Monte Carlo estimate of the residual's on coalitions the proxy
did not see. The papers fit gradient-boosted trees; here the proxy is the odd part of the game
(all that Shapley values depend on, see `odd`): main effects, the third-order parities that
cross-validated screening keeps, and `regression_adjusted`'s odd single-index terms for the
saturation of sigmoid-like games. Parities have closed-form stratum means (`parity_share`),
so no tree ensemble is needed to get the proxy's values, and NumPy is the only dependency.
"""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._paired import PairedDesign, PairedSample
from longshap.hierarchy.estimators.base import register
from longshap.hierarchy.estimators.odd import candidates_for, choose_terms, parities, solve
from longshap.hierarchy.estimators.regression_adjusted import FOLDS, RIDGE, SLOPES, estimate_adjusted, ReferencePairs, Surrogate


def fit_proxy(x: np.ndarray, d: np.ndarray, weights: np.ndarray, prior: float, labels: np.ndarray) -> Surrogate:
    """The odd proxy of d on one cross-fitting fold's training pairs.

    First the sparse parity model, fitted under d(N) = n * prior = v(N) - v(empty) with the
    terms `choose_terms` keeps (its folds nested inside this training set; the pairs' draw
    order is random, so a fixed generator for their deal is no loss). Then, once the pairs
    exceed the parameters, everything is refitted together with ridge-penalised tanh terms
    along the main-effects direction, as `regression_adjusted` does, so log-sigmoid games
    keep their benefit.
    """
    n = x.shape[1]
    total = n * prior
    strata = len(np.unique(labels))
    candidates = candidates_for(x, d, weights, total)
    terms = choose_terms(x, d, weights, total, labels, strata, candidates, np.random.default_rng(len(d)))
    coefficients, _ = solve(np.hstack([x, parities(x, terms)]), d, weights, total)
    theta, beta = coefficients[:n], coefficients[n:]
    surrogate = Surrogate(theta, terms=terms, beta=beta)
    if len(d) <= n + len(terms) + len(SLOPES):
        return surrogate
    u = x @ theta
    rms = np.sqrt(np.sum(weights * u**2) / np.sum(weights))
    if not rms > 0:
        return surrogate
    root = np.sqrt(weights)
    bent = np.tanh(np.outer(u / rms, SLOPES))
    design = np.hstack([x, parities(x, terms), bent]) * root[:, None]
    width = n + len(terms)
    penalty = np.sqrt(RIDGE * np.sum(design[:, width:] ** 2) / len(SLOPES))
    augmented = np.vstack([design, np.hstack([np.zeros((len(SLOPES), width)), penalty * np.eye(len(SLOPES))])])
    solution = np.linalg.lstsq(augmented, np.concatenate([root * d, np.zeros(len(SLOPES))]), rcond=None)[0]
    return Surrogate(solution[:n], theta / rms, solution[width:], terms, solution[n:width])


@register("proxy")
class Proxy(PairedDesign):
    """Shapley values of an odd proxy of the game, corrected by cross-fitted Monte Carlo on its residual.

    Sampling is Leverage SHAP's (distinct pairs, an equal share per coalition size, small
    strata enumerated and then exact). The residual estimate, its cross-fitting over FOLDS
    folds and its standard errors are `regression_adjusted`'s (see its `estimate_adjusted`): each
    fold's pairs are corrected by a proxy fitted on the other folds, so the estimate is
    unbiased whatever the proxy, and the standard error is the residual's spread within folds
    (inf while a sampled stratum has too few pairs to measure it). The better the proxy, the
    smaller the residual: on a game whose odd part is main effects plus a few triples the
    residual, and with it the error, vanishes.

    Games with outer contexts (Owen subgames) go to `kernel`, as with `leverage`.
    Budget and batches as `leverage`: 2 + 2 * pairs evaluations, at least one pair.
    """

    def prepare(self, n: int, rng: np.random.Generator) -> ReferencePairs:
        return ReferencePairs(n, rng)

    def fit(self, data: PairedSample, state: object) -> tuple[np.ndarray, np.ndarray]:
        assert isinstance(state, ReferencePairs)
        return estimate_adjusted(data, state, fit_proxy)

    def extras(self, data: PairedSample, state: object) -> dict:
        return {"folds": FOLDS}
