"""Statistical behaviour of the sampling estimators: convergence, calibrated errors, contexts.

Seeds are fixed, so these are deterministic; the thresholds leave room for sampling
noise while still failing for a biased estimator or a standard error that is off by a
factor of about 1.5 or more.
"""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.estimators import estimate
from synthetic_games import ContextGame, Interaction, reference_banzhaf

CUBIC = Interaction(10, seed=7, cubic=0.3)
TARGETS = {"permutation": "shapley", "kernel": "shapley", "banzhaf": "banzhaf"}


def test_banzhaf_closed_form_matches_bruteforce():
    game = Interaction(6, seed=12, cubic=0.6)
    np.testing.assert_allclose(game.banzhaf(), reference_banzhaf(game, 6)[:, 0], atol=1e-10)


@pytest.mark.parametrize("method", TARGETS)
def test_error_shrinks_with_budget(method):
    game = Interaction(12, seed=13, cubic=0.3)
    truth = getattr(game, TARGETS[method])()

    def mean_error(budget: int) -> float:
        return np.mean([np.abs(estimate(game, 12, method, budget=budget, seed=seed).values - truth).mean() for seed in range(8)])

    assert mean_error(1500) < 0.55 * mean_error(150)  # ~sqrt(1/10) = 0.32 expected


@pytest.mark.parametrize("method", TARGETS)
def test_standard_errors_cover_at_roughly_nominal_rate(method):
    truth = getattr(CUBIC, TARGETS[method])()
    covered = [
        np.abs(result.values - truth) <= 1.96 * result.stderr
        for result in (estimate(CUBIC, 10, method, budget=300, seed=seed) for seed in range(40))
    ]
    assert 0.85 <= np.mean(covered) <= 0.99


@pytest.mark.parametrize("method", TARGETS)
def test_context_games_converge_to_the_expected_value(method):
    game = ContextGame(5, cubic=0.5)
    truth = game.expected(TARGETS[method])
    results = [estimate(game, 5, method, budget=400, seed=seed) for seed in range(25)]
    covered = np.mean([np.abs(r.values - truth) <= 1.96 * r.stderr for r in results])
    pooled = np.mean([r.values for r in results], axis=0)
    pooled_se = np.sqrt(np.sum([r.stderr**2 for r in results], axis=0)) / len(results)
    assert 0.85 <= covered <= 0.99
    assert np.all(np.abs(pooled - truth) <= 4 * pooled_se)  # unbiased, not only well calibrated
    assert np.max(pooled_se) < 0.07
    if method != "banzhaf":  # efficiency holds per context, so on average over contexts
        totals = [r.values.sum() for r in results]
        assert abs(np.mean(totals) - truth.sum()) < 4 * np.std(totals, ddof=1) / np.sqrt(len(totals))


def test_loo_enumerates_context_support_or_samples_contexts():
    game = ContextGame(5, cubic=0.5)
    exact = estimate(game, 5, "loo", budget=3 * 6)
    np.testing.assert_allclose(exact.values, game.expected("loo"), atol=1e-10)
    np.testing.assert_array_equal(exact.stderr, 0.0)
    sampled = estimate(game, 5, "loo", budget=2 * 6, seed=3)
    rng = np.random.default_rng(3)
    per_context = np.array([game.games[game.sample_context(rng)].loo() for _ in range(2)])
    np.testing.assert_allclose(sampled.values, per_context.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(sampled.stderr, per_context.std(axis=0, ddof=1) / np.sqrt(2), atol=1e-10)
