"""The exact estimator against closed forms and brute-force permutation enumeration."""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.estimators import estimate
from synthetic_games import ContextGame, GrowingAnswers, Interaction, additive, reference_shapley, two_columns, voting


@pytest.mark.parametrize(
    "value_fn, n",
    [
        (additive(np.array([0.5, -1.0, 2.0, 0.0, 3.5])), 5),
        (voting([4, 3, 2, 1, 1, 1], quota=7), 6),
        (Interaction(6, seed=1), 6),
        (Interaction(6, seed=2, cubic=0.7), 6),
    ],
    ids=["additive", "voting", "pairwise", "cubic"],
)
def test_exact_matches_bruteforce_reference(value_fn, n):
    result = estimate(value_fn, n, "exact")
    assert result.values.shape == (n,)
    np.testing.assert_allclose(result.values, reference_shapley(value_fn, n)[:, 0], atol=1e-10)
    np.testing.assert_array_equal(result.stderr, 0.0)
    assert result.evaluations == 2**n


def test_exact_matches_closed_forms():
    weights = np.array([0.5, -1.0, 2.0, 0.0, 3.5, 1.25])
    np.testing.assert_allclose(estimate(additive(weights), 6, "exact").values, weights, atol=1e-10)
    game = Interaction(10, seed=3, cubic=0.4)
    np.testing.assert_allclose(estimate(game, 10, "exact").values, game.shapley(), atol=1e-10)


def test_exact_two_columns_are_attributed_separately():
    first, second = Interaction(5, seed=4), voting([3, 2, 2, 1, 1], quota=5)
    result = estimate(two_columns(first, second), 5, "exact")
    assert result.values.shape == result.stderr.shape == (5, 2)
    np.testing.assert_allclose(result.values[:, 0], first.shapley(), atol=1e-10)
    np.testing.assert_allclose(result.values[:, 1], reference_shapley(second, 5)[:, 0], atol=1e-10)


def test_exact_efficiency_symmetry_and_dummy():
    value_fn = voting([3, 3, 2, 2, 0], quota=6)  # players 0,1 and 2,3 are symmetric; player 4 is a dummy
    result = estimate(value_fn, 5, "exact").values
    assert result.sum() == pytest.approx(1.0, abs=1e-12)
    assert result[0] == pytest.approx(result[1], abs=1e-12)
    assert result[2] == pytest.approx(result[3], abs=1e-12)
    assert result[0] > result[2]
    assert result[4] == pytest.approx(0.0, abs=1e-12)


def test_exact_is_linear():
    first, second = Interaction(7, seed=5, cubic=0.3), voting([3, 2, 2, 1, 1, 1, 1], quota=6)
    combined = estimate(lambda z: first(z) + 2.0 * second(z), 7, "exact").values
    separate = estimate(first, 7, "exact").values + 2.0 * estimate(second, 7, "exact").values
    np.testing.assert_allclose(combined, separate, atol=1e-10)


def test_exact_refuses_too_many_players_before_evaluating():
    def never(coalitions):
        raise AssertionError("exact evaluated a game it should have refused")

    with pytest.raises(ValueError, match=r"n=17.*'permutation'"):
        estimate(never, 17, "exact")


def test_exact_growing_columns_match_the_same_game_with_all_columns_known():
    growing = GrowingAnswers([5, 1, 3, 2, 4, 2])
    result = estimate(growing, 6, "exact")
    assert result.values.shape == (6, len(growing.columns)) and len(growing.columns) > 10
    frozen = growing.frozen()
    np.testing.assert_allclose(result.values, reference_shapley(frozen, 6), atol=1e-10)
    np.testing.assert_allclose(result.values.sum(axis=0), frozen(np.ones((1, 6), bool))[0] - frozen(np.zeros((1, 6), bool))[0], atol=1e-12)


def test_exact_enumerates_context_support_with_probabilities():
    game = ContextGame(5, cubic=0.5)
    result = estimate(game, 5, "exact", budget=3 * 2**5)
    np.testing.assert_allclose(result.values, game.expected("shapley"), atol=1e-10)
    np.testing.assert_array_equal(result.stderr, 0.0)
    assert result.evaluations == 3 * 2**5 and result.samples == 3


def test_exact_samples_contexts_when_the_support_is_too_large():
    game = ContextGame(4)
    result = estimate(game, 4, "exact", budget=2 * 2**4, seed=11)
    rng = np.random.default_rng(11)
    drawn = [game.sample_context(rng) for _ in range(2)]
    per_context = np.array([game.games[c].shapley() for c in drawn])
    np.testing.assert_allclose(result.values, per_context.mean(axis=0), atol=1e-10)
    np.testing.assert_allclose(result.stderr, per_context.std(axis=0, ddof=1) / np.sqrt(2), atol=1e-10)
    single = estimate(game, 4, "exact", seed=11)
    assert single.samples == 1 and np.all(np.isinf(single.stderr))
