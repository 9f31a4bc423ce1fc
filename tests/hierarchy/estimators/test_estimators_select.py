"""`select`: every paired-design model on one shared sample, the one with the smallest claimed variance kept."""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.estimators._stats import all_coalitions, shapley_from_table
from longshap.hierarchy.estimators.auto import choose
from longshap.hierarchy.estimators.select import CANDIDATES
from longshap.hierarchy.games import FunctionGame, MemoisedGame
from test_estimators_odd_proxy import sparse_cubic


def _truth(value_fn, n: int) -> np.ndarray:
    return shapley_from_table(np.asarray(value_fn(all_coalitions(n)), dtype=float)[:, None], n)[:, 0]


def test_select_keeps_odd_on_a_sparse_third_order_game_and_is_then_exact():
    game = sparse_cubic()
    result = estimate(game, 10, "select", budget=400, seed=0)
    claimed = result.extras["claimed_variance"]
    assert set(claimed) == set(CANDIDATES)
    assert result.method == result.extras["chosen"] == min(claimed, key=claimed.get)
    assert result.method in ("odd", "proxy")  # both model the three parities exactly
    np.testing.assert_allclose(result.values, _truth(game, 10), atol=1e-7)


def test_select_costs_what_one_paired_design_costs():
    calls = {"select": 0, "leverage": 0}

    def counted(name):
        def value(z):
            calls[name] += len(z)
            return z @ np.arange(10.0) + z[:, 0] * z[:, 1]

        return value

    for name in calls:
        assert estimate(counted(name), 10, name, budget=150, seed=2).evaluations == 150
    assert calls["select"] == calls["leverage"] == 150


def test_select_never_prefers_a_candidate_that_cannot_measure_its_error():
    # 40 evaluations on 12 players: the cross-fitted proxies have too few pairs per fold (inf)
    game = lambda z: np.log1p(np.exp(z @ np.linspace(-1, 2, 12)))  # noqa: E731
    result = estimate(game, 12, "select", budget=40, seed=0)
    claimed = result.extras["claimed_variance"]
    assert claimed["regression_adjusted"] == claimed["proxy"] == np.inf
    assert result.method == "leverage" and np.isfinite(claimed["leverage"])
    assert np.all(np.isfinite(result.stderr))


def test_select_with_no_candidate_able_to_measure_its_error_reports_inf():
    game = lambda z: np.log1p(np.exp(z @ np.linspace(-1, 2, 12)))  # noqa: E731
    result = estimate(game, 12, "select", budget=30, seed=0)
    assert result.method == "leverage" and np.all(np.isinf(result.stderr))


@pytest.mark.parametrize("seed", range(3))
def test_select_standard_errors_cover_the_truth_on_a_saturating_game(seed):
    n = 12
    weights = np.random.default_rng(seed).normal(size=n) * 1.5
    game = lambda z, w=weights: -np.logaddexp(0.0, -(z @ w - 1.0))  # noqa: E731
    truth = _truth(game, n)
    covered = [np.mean(np.abs(r.values - truth) <= 2 * r.stderr + 1e-12) for r in (estimate(game, n, "select", budget=20 * n, seed=s) for s in range(10))]
    assert np.mean(covered) >= 0.85


def test_auto_runs_select_from_12n_on_plain_games():
    game = MemoisedGame(FunctionGame(lambda z: z.sum(axis=1, keepdims=True).astype(float), 12))
    assert choose(game, 12 * 12 - 1) == "regression_adjusted"
    assert choose(game, 12 * 12) == "select"
    result = estimate(sparse_cubic(), 10, "auto", budget=400, seed=0)
    assert result.method in CANDIDATES and result.extras["requested"] == "auto"
