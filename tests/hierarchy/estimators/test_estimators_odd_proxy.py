"""The odd-part regression (`odd`) and the proxy-plus-residual estimator (`proxy`) on games with known values."""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.estimators._paired import all_pairs_of
from longshap.hierarchy.estimators._stats import all_coalitions, shapley_from_table
from longshap.hierarchy.estimators.odd import parities, to_shapley, triples
from longshap.hierarchy.estimators.regression_adjusted import _kappa, Surrogate, parity_share
from longshap.hierarchy.games import FunctionGame, MemoisedGame
from synthetic_games import additive


def _truth(value_fn, n: int) -> np.ndarray:
    return shapley_from_table(np.asarray(value_fn(all_coalitions(n)), dtype=float)[:, None], n)[:, 0]


def sparse_cubic(n: int = 10, seed: int = 3):
    """Main effects plus three third-order products z_i z_j z_l: an odd part of main effects and three parities."""
    rng = np.random.default_rng(seed)
    main = rng.normal(size=n)
    groups = [(0, 1, 2), (3, 4, 7), (1, 5, 8)]
    strengths = rng.normal(size=len(groups)) * 2.0
    return lambda z: z @ main + sum(c * z[:, a] * z[:, b] * z[:, e] for c, (a, b, e) in zip(strengths, groups))


def dense_cubic(n: int = 8, seed: int = 4):
    """Every triple interacts: the full third-order expansion is needed."""
    rng = np.random.default_rng(seed)
    main, pair, third = rng.normal(size=n), rng.normal(size=(n, n)) * 0.5, rng.normal(size=(n, n, n)) * 0.3
    return lambda z: z @ main + np.einsum("mi,ij,mj->m", z * 1.0, np.triu(pair, 1), z * 1.0) + np.einsum(
        "mi,mj,ml,ijl->m", z * 1.0, z * 1.0, z * 1.0, third
    )


@pytest.mark.parametrize("method", ["odd", "proxy"])
def test_additive_games_are_exact_with_zero_error(method):
    weights = np.random.default_rng(0).normal(size=12)
    result = estimate(additive(weights), 12, method, budget=120, seed=1)
    np.testing.assert_allclose(result.values, weights, atol=1e-9)
    assert np.all(result.stderr < 1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_odd_recovers_a_sparse_third_order_game_exactly_at_moderate_budgets(seed):
    game = sparse_cubic()
    truth = _truth(game, 10)
    leverage = estimate(game, 10, "leverage", budget=140, seed=seed)
    result = estimate(game, 10, "odd", budget=140, seed=seed)  # 69 pairs of 511
    np.testing.assert_allclose(result.values, truth, atol=1e-8)
    assert np.all(result.stderr < 1e-6)
    assert np.linalg.norm(leverage.values - truth) > 1e-3  # main effects alone cannot do it


def test_proxy_removes_a_sparse_third_order_game_s_residual():
    game = sparse_cubic()
    truth = _truth(game, 10)
    result = estimate(game, 10, "proxy", budget=200, seed=0)
    np.testing.assert_allclose(result.values, truth, atol=1e-8)


def test_odd_fits_the_full_third_order_expansion_once_the_pairs_allow_it():
    game = dense_cubic()
    truth = _truth(game, 8)
    result = estimate(game, 8, "odd", budget=200, seed=0)  # 99 of the 127 pairs; 8 + 56 parameters
    np.testing.assert_allclose(result.values, truth, atol=1e-8)


def test_odd_shapley_values_split_each_parity_among_its_players():
    n = 6
    terms = np.array([[0, 1, 2], [1, 3, 5]])
    theta, beta = np.arange(n, dtype=float), np.array([0.6, -0.3])
    table = np.zeros(2**n)
    x = 2.0 * all_coalitions(n) - 1.0
    # a game whose odd part is x.theta / 2 + parities / 2: d = 2 v_odd
    table = (x @ theta + parities(x, terms) @ beta) / 2
    np.testing.assert_allclose(to_shapley(n, theta, terms, beta), shapley_from_table(table[:, None], n)[:, 0], atol=1e-12)


@pytest.mark.parametrize("n", [7, 8, 9])
def test_parity_stratum_means_match_enumeration(n):
    rng = np.random.default_rng(n)
    candidates = triples(np.arange(n))
    surrogate = Surrogate(np.zeros(n), terms=candidates[rng.choice(len(candidates), 5, replace=False)], beta=rng.normal(size=5))
    for size in range(1, n // 2 + 1):
        members = all_pairs_of(n, size)
        enumerated = (_kappa(members, size, n) * surrogate.predict(2.0 * members - 1.0)[:, None]).mean(axis=0)
        np.testing.assert_allclose(parity_share(surrogate, size, n), enumerated, atol=1e-12)


@pytest.mark.parametrize("method", ["odd", "proxy"])
def test_too_few_pairs_leave_the_error_unknown(method):
    game = sparse_cubic()
    result = estimate(game, 10, method, budget=16, seed=0)  # 7 pairs for 9 free main effects
    assert result.evaluations <= 16
    assert np.all(np.isinf(result.stderr)) and np.all(np.isfinite(result.values))


@pytest.mark.parametrize("method", ["odd", "proxy"])
def test_budgets_are_respected_exactly(method):
    for n, budget in [(5, 11), (12, 61), (16, 800), (25, 300)]:
        game = MemoisedGame(FunctionGame(lambda z: np.tanh(z @ np.linspace(-1, 1, z.shape[1]))[:, None], n))
        estimate(game, n, method, budget=budget, seed=0)
        assert game.evaluations <= budget


@pytest.mark.parametrize("method", ["odd", "proxy"])
def test_coverage_on_a_noisy_voting_game(method):
    weights = np.array([5, 9, 9, 4, 9, 8, 6, 8, 7, 9, 4, 1], dtype=float)
    game = lambda z: (z @ weights >= weights.sum() / 2).astype(float)  # noqa: E731
    truth = _truth(game, 12)
    results = [estimate(game, 12, method, budget=240, seed=seed) for seed in range(30)]
    covered = np.mean([np.abs(r.values - truth) <= 2 * r.stderr for r in results])
    assert np.all([np.isfinite(r.stderr) for r in results])
    assert 0.90 <= covered <= 0.995, covered


@pytest.mark.parametrize("multiple", [5, 20, 50])
def test_odd_standard_errors_cover_at_least_nominally(multiple):
    # Conservative by design (leave-one-out residuals and HC1 for the terms it picked): measured
    # 1.00 at 5n and 50n on the log-sigmoid game, so only the lower bound is held.
    weights = np.random.default_rng(5).normal(size=10) * 2.0
    game = lambda z: -np.logaddexp(0.0, 1.0 - z @ weights)  # noqa: E731
    truth = _truth(game, 10)
    results = [estimate(game, 10, "odd", budget=multiple * 10, seed=seed) for seed in range(40)]
    covered = np.mean([np.abs(r.values - truth) <= 2 * r.stderr for r in results])
    assert np.all([np.isfinite(r.stderr) for r in results])
    assert covered >= 0.90, covered
