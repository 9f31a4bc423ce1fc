"""Leverage SHAP, least-squares Banzhaf and auto on games with known values."""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.estimators._paired import _plan, stratum_size
from synthetic_games import ContextGame, Counting, Interaction, reference_shapley, voting

CUBIC = Interaction(10, seed=31, cubic=0.5)


def test_leverage_is_exact_once_the_budget_covers_every_coalition():
    game = Interaction(8, seed=3, cubic=0.7)
    result = estimate(game, 8, "leverage", budget=2**8, seed=0)
    np.testing.assert_allclose(result.values, game.shapley(), atol=1e-9)
    np.testing.assert_array_equal(result.stderr, 0.0)
    assert result.evaluations == 2**8


def test_leverage_matches_bruteforce_on_a_voting_game_when_enumerated():
    value_fn = voting([4, 3, 2, 2, 1, 1, 1], quota=7)
    result = estimate(value_fn, 7, "leverage", budget=2**7, seed=1)
    np.testing.assert_allclose(result.values, reference_shapley(value_fn, 7)[:, 0], atol=1e-9)


@pytest.mark.parametrize("n, pairs", [(10, 9), (10, 40), (10, 200), (16, 400), (40, 1000)])
def test_leverage_plan_spends_every_pair_on_distinct_coalitions(n, pairs):
    enumerated, counts = _plan(n, pairs)
    planned = sum(stratum_size(n, s) for s in enumerated) + sum(counts.values())
    assert planned == min(pairs, 2 ** (n - 1) - 1)
    assert all(counts[s] < stratum_size(n, s) for s in counts)
    if n == 10 and pairs == 200:
        assert 1 in enumerated  # leave-one-out and leave-one-in: 10 pairs, enumerated first


@pytest.mark.parametrize("budget", [50, 51, 200, 777])
def test_leverage_spends_the_budget(budget):
    counting = []
    result = estimate(lambda z: (counting.append(len(z)), CUBIC(z))[1], 10, "leverage", budget=budget, seed=2)
    assert result.evaluations == sum(counting) == budget - budget % 2


def test_leverage_is_unbiased_and_beats_kernel_at_equal_budget():
    truth = CUBIC.shapley()
    runs = {m: [estimate(CUBIC, 10, m, budget=200, seed=s).values for s in range(30)] for m in ("leverage", "kernel")}
    error = {m: np.mean([np.linalg.norm(v - truth) for v in values]) for m, values in runs.items()}
    assert error["leverage"] < 0.9 * error["kernel"]  # measured 0.83
    pooled = np.mean(runs["leverage"], axis=0)
    spread = np.std(runs["leverage"], axis=0, ddof=1) / np.sqrt(30)
    assert np.all(np.abs(pooled - truth) <= 4 * spread + 1e-9)


def test_banzhaf_ls_converges_to_banzhaf_and_beats_difference_of_means_with_strong_players():
    def strong(z):  # strong players' presence is noise in everyone else's difference of means
        return CUBIC(z) + z[:, :3] @ np.array([10.0, -8.0, 6.0])

    truth = CUBIC.banzhaf() + np.r_[10.0, -8.0, 6.0, np.zeros(7)]
    errors = {
        m: np.mean([np.linalg.norm(estimate(strong, 10, m, budget=300, seed=s).values - truth) for s in range(20)])
        for m in ("banzhaf", "banzhaf_ls")
    }
    assert errors["banzhaf_ls"] < 0.6 * errors["banzhaf"]  # measured 0.53
    large = estimate(strong, 10, "banzhaf_ls", budget=20000, seed=0)  # 1024 coalitions, so 80000 memoised draws
    assert np.abs(large.values - truth).max() < 0.15


def test_banzhaf_ls_converges_on_context_games():
    game = ContextGame(5, cubic=0.5)
    truth = game.expected("banzhaf")
    result = estimate(game, 5, "banzhaf_ls", budget=4000, seed=0)
    assert np.all(np.abs(result.values - truth) <= 4 * result.stderr)


@pytest.mark.parametrize(
    "game, budget, chosen",
    [
        (CUBIC, 20, "permutation"), (CUBIC, 34, "permutation"), (CUBIC, 35, "leverage"), (CUBIC, 59, "leverage"),
        (CUBIC, 60, "regression_adjusted"), (CUBIC, 119, "regression_adjusted"),
        (ContextGame(5), 400, "kernel"), (ContextGame(5), 12, "permutation"), (ContextGame(5), 19, "permutation"),
        (ContextGame(5), 20, "kernel"),
    ],
)
def test_auto_names_the_estimator_it_ran(game, budget, chosen):
    result = estimate(game, game.n_players if hasattr(game, "n_players") else 10, "auto", budget=budget, seed=0)
    assert result.method == chosen and result.extras["requested"] == "auto"


@pytest.mark.parametrize("n", [10, 16])
@pytest.mark.parametrize("multiple", [3.0, 3.25, 3.5, 3.75, 4.0])
def test_auto_spends_its_budget_between_3n_and_4n(n, multiple):
    # Below 3.5n permutation runs whole antithetic pairs (2n each), then a partial pair
    # with the rest; before, a third of a 3n budget went unspent.
    game = Interaction(n, seed=31, cubic=0.3)
    budget = int(multiple * n)
    counted = [Counting(game) for _ in range(20)]
    results = [estimate(counting, n, "auto", budget=budget, seed=seed) for seed, counting in enumerate(counted)]
    assert all(len(c.seen) == r.evaluations <= budget for c, r in zip(counted, results))
    # A window at the chain's ends, or coalitions an earlier pair already evaluated, saves a few.
    assert np.mean([r.evaluations for r in results]) >= 0.95 * budget
    assert {r.method for r in results} == {"permutation" if multiple < 3.5 else "leverage"}
