"""Deterministic properties of the sampling estimators: efficiency, linearity, budgets, memoisation."""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.estimators import Progress, estimate, get_estimator
from longshap.hierarchy.games import FunctionGame, MemoisedGame
from synthetic_games import Counting, GrowingAnswers, Interaction, additive, two_columns, voting

SAMPLERS = ["permutation", "kernel", "leverage", "auto", "banzhaf", "banzhaf_ls", "loo", "regression_adjusted", "kadd", "odd", "proxy"]
# regression_adjusted's and proxy's surrogates are fitted nonlinearly, and odd selects terms, by design; auto runs them from 6n.
LINEAR = [m for m in SAMPLERS if m not in ("regression_adjusted", "auto", "odd", "proxy")]
ALL = ["exact", *SAMPLERS]
CUBIC = Interaction(10, seed=7, cubic=0.3)


def _total(value_fn, n: int) -> np.ndarray:
    ends = value_fn(np.array([[False] * n, [True] * n]))
    return ends[1] - ends[0]


@pytest.mark.parametrize("method", ["permutation", "kernel", "regression_adjusted", "kadd", "odd", "proxy"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_efficiency_holds_exactly(method, seed):
    value_fn = two_columns(CUBIC, voting([4, 3, 3, 2, 2, 2, 1, 1, 1, 1], quota=10))
    result = estimate(value_fn, 10, method, budget=150, seed=seed)
    np.testing.assert_allclose(result.values.sum(axis=0), _total(value_fn, 10), atol=1e-9)


@pytest.mark.parametrize("method", ["permutation", "kernel", "regression_adjusted", "kadd", "odd", "proxy"])
def test_antithetic_and_paired_sampling_are_exact_for_pairwise_games(method):
    game = Interaction(9, seed=8)
    result = estimate(game, 9, method, budget=60, seed=3)
    np.testing.assert_allclose(result.values, game.shapley(), atol=1e-9)
    assert np.all(result.stderr < 1e-9)


def test_permutation_gives_a_dummy_exactly_zero_with_the_smallest_error():
    result = estimate(voting([3, 2, 2, 1, 0, 1], quota=5), 6, "permutation", budget=100, seed=0)
    assert result.values[4] == 0.0
    # No spread of its own, but with 8 pairs that could be luck: the pooled spread keeps it above 0.
    assert 0.0 < result.stderr[4] < np.delete(result.stderr, 4).min()


@pytest.mark.parametrize("method", LINEAR)
def test_estimates_are_linear_in_the_game_for_a_fixed_seed(method):
    other = voting([4, 3, 3, 2, 2, 2, 1, 1, 1, 1], quota=10)
    combined = estimate(lambda z: CUBIC(z) - 3.0 * other(z), 10, method, budget=300, seed=5).values
    separate = estimate(CUBIC, 10, method, budget=300, seed=5).values - 3.0 * estimate(other, 10, method, budget=300, seed=5).values
    np.testing.assert_allclose(combined, separate, atol=1e-9)


def test_loo_and_small_games_match_closed_forms():
    np.testing.assert_allclose(estimate(CUBIC, 10, "loo").values, CUBIC.loo(), atol=1e-10)
    assert estimate(CUBIC, 10, "loo").evaluations == 11
    single = lambda z: 2.5 * z[:, 0] + 1.0  # noqa: E731
    for method in ALL:
        assert estimate(single, 1, method, budget=10).values == pytest.approx([2.5])
    pair = Interaction(2, seed=9, cubic=0.0)
    for method in ["permutation", "kernel"]:
        result = estimate(pair, 2, method, budget=20, seed=1)
        np.testing.assert_allclose(result.values, pair.shapley(), atol=1e-12)
        assert result.evaluations == 4


@pytest.mark.parametrize("method", SAMPLERS)
@pytest.mark.parametrize("n, budget", [(10, 23), (10, 100), (10, 333), (40, 500), (40, 1234)])
def test_budget_is_never_exceeded_once_one_sample_group_fits(method, n, budget):
    game = MemoisedGame(FunctionGame(additive(np.arange(n, dtype=float)), n))
    result = estimate(game, n, method, budget=budget, seed=budget)
    assert result.evaluations == game.evaluations <= budget
    if method != "loo":
        assert budget - game.evaluations < 2 * n  # the budget is used up to less than one sample group
    assert np.all(np.isfinite(result.values))


@pytest.mark.parametrize("method, minimum", [("permutation", 20), ("kernel", 10), ("banzhaf", 5), ("loo", 11)])
def test_tiny_budgets_still_do_one_sample_group(method, minimum):
    result = estimate(CUBIC, 10, method, budget=5, seed=0)
    assert result.evaluations <= minimum
    assert np.all(np.isfinite(result.values))


@pytest.mark.parametrize("method", ["permutation", "kernel", "banzhaf"])
def test_target_stderr_stops_early(method):
    game = Interaction(12, seed=10, cubic=0.2)
    result = estimate(game, 12, method, budget=3000, seed=0, target_stderr=0.25)
    assert result.evaluations < 3000
    assert np.max(result.stderr) <= 0.25
    assert result.samples >= 4
    assert estimate(game, 12, method, budget=3000, seed=0).evaluations > result.evaluations


@pytest.mark.parametrize("method, groups", [("permutation", 4), ("kernel", 6)])  # kernel: batches of 3 groups
def test_target_stderr_waits_for_a_minimum_of_sample_groups(method, groups):
    result = estimate(Interaction(10, seed=14), 10, method, budget=2000, target_stderr=1e-6)
    assert np.all(result.stderr <= 1e-6)  # exact from the second group on, yet sampling goes on
    assert result.extras.get("contexts", result.samples) == groups


@pytest.mark.parametrize("method", ALL)
def test_memoisation_never_repeats_a_coalition(method):
    counting = Counting(Interaction(6, seed=11, cubic=0.5))
    result = estimate(counting, 6, method, budget=50, seed=0)
    assert len(counting.seen) == len(set(counting.seen)) == result.evaluations


@pytest.mark.parametrize("method", ALL)
def test_growing_columns_are_padded_like_a_game_with_all_columns_known(method):
    growing = GrowingAnswers([1, 2, 4, 8, 16, 32, 64, 128])  # every coalition its own answer: k grows every call
    # Several calls, even with 8 pairs per call; leverage would enumerate all 2**8 coalitions at once at 600.
    budget = 150 if method in ("leverage", "auto", "regression_adjusted", "kadd", "odd", "proxy") else 600
    grown = estimate(growing, 8, method, budget=budget, seed=4)
    assert grown.values.shape == grown.stderr.shape == (8, len(growing.columns))
    if method not in ("exact", "loo"):  # these make a single call
        assert len(growing.widths) > 2 and growing.widths[0] < growing.widths[-1]
    fixed = estimate(growing.frozen(), 8, method, budget=budget, seed=4)
    np.testing.assert_allclose(grown.values, fixed.values, atol=1e-12)
    np.testing.assert_allclose(grown.stderr, fixed.stderr, atol=1e-12)


@pytest.mark.parametrize("method", ALL)
def test_progress_reports_every_batch(method):
    reports: list[Progress] = []
    budget = 1024 if method == "exact" else 300
    result = estimate(two_columns(CUBIC, CUBIC), 10, method, budget=budget, progress=reports.append)
    assert reports and all(r.values.shape == r.stderr.shape == (10, 2) and r.budget == budget for r in reports)
    assert [r.evaluations for r in reports] == sorted(r.evaluations for r in reports)
    assert reports[-1].evaluations == result.evaluations
    np.testing.assert_array_equal(reports[-1].values, result.values)
    if method in ("permutation", "kernel", "banzhaf"):
        assert len(reports) > 1


@pytest.mark.parametrize("method", SAMPLERS)
def test_budget_counts_from_the_games_state_at_the_call(method):
    game = MemoisedGame(FunctionGame(CUBIC, 10))
    game.evaluate(np.random.default_rng(0).random((200, 10)) < 0.5)  # e.g. an earlier level of nested sampling
    before = game.evaluations
    result = get_estimator(method).attribute(game, 100, np.random.default_rng(1))
    assert result.evaluations == game.evaluations - before <= 100
    assert result.evaluations <= 11 if method == "loo" else result.evaluations > 50
