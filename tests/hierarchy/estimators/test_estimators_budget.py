"""A budget bounds the evaluations: every estimator, any game size, any budget, plain games and games with contexts."""
from __future__ import annotations

import numpy as np
import pytest
from longshap.hierarchy.estimators import ESTIMATORS, estimate, get_estimator
from longshap.hierarchy.estimators.base import WithinBudget
from longshap.hierarchy.games import FunctionGame, MemoisedGame

from synthetic_games import ContextGame

SIZES = (1, 2, 3, 5, 8, 13, 30)


def _plain(n: int) -> FunctionGame:
    weights = np.random.default_rng(n).normal(size=n)
    return FunctionGame(lambda coalitions: np.tanh(coalitions.astype(float) @ weights)[:, None], n)


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
@pytest.mark.parametrize("kind", ["plain", "contexts"])
def test_no_estimator_spends_more_than_its_budget(method, kind):
    for n in SIZES:
        if method == "exact" and n > 13:
            continue
        for budget in sorted({0, 1, 2, 3, 4, 5, 7, 9, 10, 11, n, n + 1, 2 * n - 1, 2 * n, 2 * n + 1, 3 * n, 4 * n + 3}):
            game = MemoisedGame(_plain(n) if kind == "plain" else ContextGame(n))
            result = WithinBudget(get_estimator(method)).attribute(game, budget, np.random.default_rng(budget))
            assert game.evaluations <= budget, f"{method}, n={n}: {game.evaluations} evaluations for a budget of {budget}"
            assert result.values.shape[0] == n and result.stderr.shape[0] == n


def test_below_its_minimum_an_estimator_gives_way_to_permutation_and_says_so():
    result = estimate(lambda coalitions: coalitions.sum(axis=1).astype(float), 6, "kernel", budget=8)
    assert result.method == "permutation" and result.evaluations <= 8


def test_a_budget_below_one_pair_gives_the_covered_players_a_sample_and_the_rest_stay_unknown():
    n = 20
    result = estimate(lambda coalitions: coalitions.astype(float) @ np.arange(1.0, n + 1), n, "permutation", budget=12)
    assert result.evaluations <= 12
    assert np.all(np.isinf(result.stderr))  # one sample each at most: no spread measured
    covered = result.values != 0
    # An additive game: each covered player's one sample is its exact value; the others are not guessed.
    np.testing.assert_allclose(result.values[covered], np.arange(1.0, n + 1)[covered])
    assert 1 <= covered.sum() <= 5


def test_a_budget_of_zero_evaluates_nothing():
    game = MemoisedGame(_plain(4))
    result = WithinBudget(get_estimator("auto")).attribute(game, 0, np.random.default_rng(0))
    assert game.evaluations == 0 and np.all(np.isinf(result.stderr)) and not np.any(result.values)
