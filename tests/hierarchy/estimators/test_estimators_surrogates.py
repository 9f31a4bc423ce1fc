"""regression_adjusted and kadd: exactness, unbiasedness, the gain over leverage, interactions, contexts."""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.estimators._paired import all_pairs_of
from longshap.hierarchy.estimators.regression_adjusted import _kappa, _linear_share
from synthetic_games import ContextGame, GrowingAnswers, Interaction, reference_shapley, voting

WEIGHTS = np.random.default_rng(5).normal(size=10) * 2.0


def log_sigmoid(coalitions: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, 1.0 - coalitions @ WEIGHTS)


@pytest.mark.parametrize("n", [6, 7])
def test_pair_formula_and_linear_share_match_the_definition(n):
    """phi_i = (v(N) - v(empty)) / n + sum_t mean over stratum t of kappa_i d, and the linear closed form."""
    game = Interaction(n, seed=4, cubic=0.6)
    phi = (game(np.ones((1, n), bool)) - game(np.zeros((1, n), bool)))[0] / n * np.ones(n)
    theta = np.random.default_rng(0).normal(size=n)
    for size in range(1, n // 2 + 1):
        members = all_pairs_of(n, size)
        kappa = _kappa(members, size, n)
        phi = phi + kappa.T @ (game(members) - game(~members)) / len(members)
        x = 2.0 * members - 1.0
        np.testing.assert_allclose(_linear_share(theta, size, n), kappa.T @ (x @ theta) / len(members), atol=1e-12)
    np.testing.assert_allclose(phi, game.shapley(), atol=1e-10)


@pytest.mark.parametrize("method", ["regression_adjusted", "kadd"])
def test_exact_once_the_budget_covers_every_coalition(method):
    value_fn = voting([4, 3, 2, 2, 1, 1, 1], quota=7)
    result = estimate(value_fn, 7, method, budget=2**7, seed=1)
    np.testing.assert_allclose(result.values, reference_shapley(value_fn, 7)[:, 0], atol=1e-9)
    np.testing.assert_array_equal(result.stderr, 0.0)
    assert result.evaluations == 2**7


def test_regression_adjusted_is_unbiased_and_beats_leverage_on_a_saturating_game():
    truth = estimate(log_sigmoid, 10, "exact").values
    runs = {m: [estimate(log_sigmoid, 10, m, budget=100, seed=s).values for s in range(30)] for m in ("regression_adjusted", "leverage")}
    error = {m: np.mean([np.linalg.norm(v - truth) for v in values]) for m, values in runs.items()}
    assert error["regression_adjusted"] < 0.7 * error["leverage"]  # measured 0.43
    pooled = np.mean(runs["regression_adjusted"], axis=0)
    spread = np.std(runs["regression_adjusted"], axis=0, ddof=1) / np.sqrt(30)
    assert np.all(np.abs(pooled - truth) <= 4 * spread + 1e-9)


def test_regression_adjusted_is_unbiased_on_a_cubic_game():
    game = Interaction(10, seed=31, cubic=0.5)
    runs = np.array([estimate(game, 10, "regression_adjusted", budget=100, seed=s).values for s in range(40)])
    spread = runs.std(axis=0, ddof=1) / np.sqrt(len(runs))
    assert np.all(np.abs(runs.mean(axis=0) - game.shapley()) <= 4 * spread)


def test_kadd_equals_leverage_and_recovers_pairwise_interactions():
    game = Interaction(10, seed=31, cubic=0.5)
    for budget in (50, 200):
        kadd, leverage = (estimate(game, 10, m, budget=budget, seed=2) for m in ("kadd", "leverage"))
        np.testing.assert_allclose(kadd.values, leverage.values, atol=1e-9)
        np.testing.assert_allclose(kadd.stderr, leverage.stderr, rtol=1e-6)
    pairwise = Interaction(9, seed=8)
    result = estimate(pairwise, 9, "kadd", budget=120, seed=3)
    np.testing.assert_allclose(result.values, pairwise.shapley(), atol=1e-9)
    np.testing.assert_allclose(result.extras["interactions"][:, :, 0], pairwise.b, atol=1e-3)


@pytest.mark.parametrize("method", ["regression_adjusted", "kadd"])
def test_context_games_are_handed_to_kernel(method):
    game = ContextGame(5, cubic=0.5)
    result = estimate(game, 5, method, budget=400, seed=0)
    assert result.method == "kernel"
    assert np.all(np.abs(result.values - game.expected("shapley")) <= 4 * result.stderr)


@pytest.mark.parametrize("method", ["regression_adjusted", "kadd"])
def test_growing_columns_sum_to_the_totals(method):
    growing = GrowingAnswers([5, 1, 3, 2, 4, 2, 1, 3])
    result = estimate(growing, 8, method, budget=120, seed=0)
    frozen = growing.frozen()
    total = frozen(np.ones((1, 8), bool))[0] - frozen(np.zeros((1, 8), bool))[0]
    np.testing.assert_allclose(result.values.sum(axis=0), total, atol=1e-9)


def test_regression_adjusted_reference_pairs_are_sampled_for_large_strata():
    n = 20  # middle strata hold up to 92378 pairs: the surrogate's means come from a sample, error included
    weights = np.linspace(-2, 2, n)
    game = lambda z: -np.logaddexp(0.0, 0.5 - z @ weights)  # noqa: E731
    result = estimate(game, n, "regression_adjusted", budget=40 * n, seed=0)
    assert np.all(np.isfinite(result.stderr)) and np.all(result.stderr > 0)
    assert result.values.sum() == pytest.approx(float(game(np.ones((1, n), bool))[0] - game(np.zeros((1, n), bool))[0]))
