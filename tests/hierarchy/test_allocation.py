"""Adaptive allocation: the stopping rule, honest pooling of rounds, and the explainer's adaptive levels."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from longshap.hierarchy.allocation import (
    Allocation,
    Pooled,
    expansion_could_change,
    run_in_rounds,
    unsettled_units,
    z_score,
)
from longshap.hierarchy.estimators import Estimate, estimate, get_estimator
from longshap.hierarchy.games import FunctionGame, MemoisedGame

from tests.hierarchy.test_explainer import DOCUMENTS, QUESTION


def test_units_near_the_threshold_or_with_close_ranks_are_unsettled():
    z = z_score(0.95)
    assert z == pytest.approx(1.959964, abs=1e-5)
    scores = np.array([1.0, 0.52, 0.1, 0.0])
    stderr = np.array([0.01, 0.05, 0.01, 0.01])
    # 0.52 +- 1.96 * 0.05 straddles 0.5; the others are far from it and from their neighbours.
    assert unsettled_units(scores, stderr, 0.5, None, z).tolist() == [False, True, False, False]
    # Ranks: 0.1 and 0.0 are 0.1 apart with a combined stderr of 0.014: settled; with 0.1 stderr each they are not.
    assert not unsettled_units(scores, stderr, None, None, z).any()
    wide = np.array([0.01, 0.01, 0.1, 0.1])
    assert unsettled_units(scores, wide, None, None, z).tolist() == [False, False, True, True]
    assert not unsettled_units(scores, wide, None, 1, z).any()  # only the top 1 (and the unit after it) must be ordered
    assert unsettled_units(scores, np.array([np.inf, 0, 0, 0]), 5.0, 0, z).tolist() == [True, False, False, False]


def test_near_ties_within_the_indifference_zone_settle():
    """Equal-valued units never separate; with a tolerance they settle once their difference is surely small."""
    z = z_score(0.95)
    scores = np.array([1.0, 0.02, 0.01, 0.0])
    tight, loose = np.full(4, 0.005), np.full(4, 0.05)
    assert unsettled_units(scores, tight, None, None, z).tolist() == [False, True, True, True]
    assert not unsettled_units(scores, tight, None, None, z, tolerance=0.05).any()
    # The same ties measured too loosely might hide a real gap: still unsettled.
    assert unsettled_units(scores, loose, None, None, z, tolerance=0.05).tolist() == [False, True, True, True]
    # A unit surely within the tolerance of the threshold settles too: either decision is as good.
    assert not unsettled_units(np.array([0.5]), np.array([0.005]), 0.5, None, z, tolerance=0.05).any()
    assert unsettled_units(np.array([0.5]), np.array([0.005]), 0.5, None, z).all()


def test_decisions_the_rest_of_the_budget_cannot_settle_ask_for_nothing():
    """Futility: with `projected` errors, an open comparison counts only if those errors would settle it."""
    z = z_score(0.95)
    half = np.sqrt(0.5)  # the rest of the budget doubles the evaluations
    # Ranks 2 and 3 are 0.01 apart with errors of 0.2: open now, and still open at 0.14.
    scores, stderr = np.array([1.0, 0.30, 0.29]), np.array([0.01, 0.2, 0.2])
    assert unsettled_units(scores, stderr, None, None, z).tolist() == [False, True, True]
    assert not unsettled_units(scores, stderr, None, None, z, projected=stderr * half).any()
    # 0.3 apart with a spread of 0.17: open now (1.96 * 0.17 = 0.33), settled at 0.12: worth another round.
    scores, stderr = np.array([1.0, 0.6, 0.3]), np.full(3, 0.12)
    assert unsettled_units(scores, stderr, None, None, z, projected=stderr * half).tolist() == [False, True, True]
    # A threshold decision 0.02 away with an error of 0.05 stays open at 0.035: futile; an infinite error always asks.
    assert not unsettled_units(np.array([0.52]), np.array([0.05]), 0.5, None, z, projected=np.array([0.035])).any()
    assert unsettled_units(np.array([0.52]), np.array([np.inf]), 0.5, None, z, projected=np.array([np.inf])).all()


def test_a_loosely_measured_unit_above_the_threshold_keeps_its_rounds():
    """5.3 +- 7.0 against a threshold of 0.5: no z-interval settles at the projected 4.2, yet the expansion rule
    (score - stderr >= threshold) would flip to expand it: such a unit must get its second round (10 NQ passages at
    quick budgets stopped at the sentences without it)."""
    scores, stderr, threshold = np.array([5.3, 0.3, 0.9]), np.array([7.0, 0.05, 0.3]), 0.5
    projected = stderr * np.sqrt(16 / 44)
    assert not unsettled_units(scores, stderr, threshold, None, z_score(0.95), projected=projected)[0]
    assert expansion_could_change(scores, stderr, projected, threshold).tolist() == [True, False, False]


def test_rounds_project_errors_to_the_whole_budget_and_the_report_does_not(tiny_explainer, monkeypatch):
    import longshap.hierarchy.explainer as explainer_module

    calls: list[tuple[np.ndarray, np.ndarray | None]] = []

    def recording(scores, stderr, threshold, top_k, z, tolerance=0.0, projected=None):
        calls.append((stderr, projected))
        return unsettled_units(scores, stderr, threshold, top_k, z, tolerance, projected)

    monkeypatch.setattr(explainer_module, "unsettled_units", recording)
    request = {"text": "a charming and often affecting journey , unflinchingly bleak and desperate", "labels": ["negative", "positive"]}
    tiny_explainer.explain(**request, budget=400, adaptive=True)
    (round_stderr, projected), (_, report) = calls[0], calls[-1]
    assert projected is not None and report is None
    finite = np.isfinite(round_stderr)
    # After the first round (about half the budget) errors are projected to shrink by about sqrt(1/2).
    np.testing.assert_allclose(projected[finite] / round_stderr[finite], np.sqrt(0.5), rtol=0.1)


def test_pooling_is_a_sample_weighted_mean_with_propagated_stderr():
    pool = Pooled()
    pool.add(Estimate(np.array([[1.0], [2.0]]), np.array([[0.2], [0.2]]), 10, "m", samples=1), 10)
    pool.add(Estimate(np.array([[4.0, 1.0], [5.0, 0.0]]), np.array([[0.1, 0.3], [0.1, 0.0]]), 10, "m", samples=3), 6)
    np.testing.assert_allclose(pool.values, [[3.25, 0.75], [4.25, 0.0]])
    np.testing.assert_allclose(pool.stderr[:, 0], np.sqrt(0.2**2 + 9 * 0.1**2) / 4)
    np.testing.assert_allclose(pool.stderr[:, 1], [0.75 * 0.3, 0.0])
    assert pool.rounds == 2 and pool.evaluations == 16 and pool.method == "m"


def interaction_game(n: int = 6) -> FunctionGame:
    weights = np.linspace(1.0, -0.5, n)
    return FunctionGame(lambda rows: rows @ weights + 2.0 * rows[:, 0] * rows[:, 1] - 1.5 * rows[:, 2] * rows[:, 3] * rows[:, 4], n)


def test_pooled_rounds_keep_their_stderr_calibrated():
    """Two permutation rounds pooled: the 95% intervals cover the exact Shapley values at about their nominal rate."""
    game = interaction_game()
    truth = estimate(game, game.n_players, method="exact").values
    covered, checked = 0, 0
    for seed in range(150):
        pools = run_in_rounds(get_estimator("permutation"), [MemoisedGame(game)], [48], [np.random.default_rng(seed)], lambda pools: [True])
        pool = pools[0]
        assert pool.rounds == 2
        values, stderr = pool.values[:, 0], pool.stderr[:, 0]
        covered += int(np.sum(np.abs(values - truth) <= 1.96 * stderr))
        checked += len(truth)
    assert 0.9 <= covered / checked <= 1.0


def test_only_unsettled_games_get_more_rounds_and_budgets_bound_them():
    games = [MemoisedGame(interaction_game()) for _ in range(2)]
    calls = []

    def second_game_unsettled(pools):
        calls.append([pool.rounds for pool in pools])
        return [False, True]

    pools = run_in_rounds(get_estimator("permutation"), games, [48, 48], [np.random.default_rng(i) for i in range(2)], second_game_unsettled)
    assert pools[0].rounds == 1 and pools[1].rounds == 2
    assert calls[0] == [1, 1] and calls[-1] == [1, 2]
    assert pools[0].evaluations <= 24 + 2 * 6  # the first round is half the budget
    assert pools[1].evaluations <= 48 + 2 * 6  # the last round may run one antithetic pair past the budget


def test_auto_keeps_its_estimator_in_every_round():
    """Rounds of a 10(n + 1) budget stay large enough for a regression: finite errors, one estimator named."""
    game = MemoisedGame(FunctionGame(lambda rows: rows.sum(axis=1).astype(float) ** 1.5, 10))
    pool = run_in_rounds(get_estimator("auto"), [game], [110], [np.random.default_rng(0)], lambda pools: [True])[0]
    assert pool.rounds == 2 and pool.method == "leverage"
    assert np.all(np.isfinite(pool.stderr))


def test_a_budget_too_small_to_split_runs_in_one_round():
    """Halves below 4n evaluations would be single permutation pairs with infinite errors: one run instead."""
    game = MemoisedGame(FunctionGame(lambda rows: rows.sum(axis=1).astype(float) ** 1.5, 10))
    pool = run_in_rounds(get_estimator("auto"), [game], [50], [np.random.default_rng(0)], lambda pools: [True])[0]
    assert pool.rounds == 1 and pool.method == "leverage"
    assert np.all(np.isfinite(pool.stderr))


@pytest.mark.parametrize("mode", ["owen", "local"])
def test_adaptive_explanations_spend_at_most_the_fixed_budget(tiny_explainer, mode):
    request = {"question": QUESTION, "documents": DOCUMENTS, "target": "Paris", "levels": ("document", "sentence"), "mode": mode}
    fixed = tiny_explainer.explain(**request, budget=64, seed=1)
    adaptive = tiny_explainer.explain(**request, budget=64, seed=1, adaptive=True)
    assert adaptive.levels[0].evaluations <= fixed.levels[0].evaluations + 2 * len(DOCUMENTS)
    for level in adaptive.levels:
        assert all(np.isfinite(f.value) and f.stderr >= 0 for f in level.features)
        sizes = Counter(f.parent for f in level.features)
        assert level.evaluations <= 64 + sum(2 * n for n in sizes.values())  # each game may overrun by one pair


def test_a_settled_level_stops_after_its_first_round(tiny_explainer):
    """With a confidence near zero every decision is settled at once: one round, half the budget."""
    request = {"text": "a charming and often affecting journey , unflinchingly bleak and desperate", "labels": ["negative", "positive"]}
    fixed = tiny_explainer.explain(**request, budget=400)
    quick = tiny_explainer.explain(**request, budget=400, adaptive=True, confidence=1e-9)
    careful = tiny_explainer.explain(**request, budget=400, adaptive=True, confidence=0.999999)
    assert quick.levels[0].evaluations <= 0.55 * fixed.levels[0].evaluations
    assert careful.levels[0].evaluations > 1.5 * quick.levels[0].evaluations


def test_levels_name_the_units_left_unsettled(tiny_explainer):
    """Adaptive levels report which decisions the budget could not settle; fixed runs make no such claim."""
    request = {"text": "a charming and often affecting journey , unflinchingly bleak and desperate", "labels": ["negative", "positive"]}
    fixed = tiny_explainer.explain(**request, budget=40)
    settled = tiny_explainer.explain(**request, budget=40, adaptive=True, confidence=1e-9)
    strict = tiny_explainer.explain(**request, budget=40, adaptive=True, confidence=0.999999)
    assert fixed.levels[0].unsettled is None
    assert settled.levels[0].unsettled == []
    ids = [f.id for f in strict.levels[0].features]
    assert strict.levels[0].unsettled and set(strict.levels[0].unsettled) <= set(ids)
    assert strict.levels[0].unsettled == [i for i in ids if i in strict.levels[0].unsettled]  # in the level's order


def test_total_budget_bounds_all_levels(tiny_explainer):
    result = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", thresholds=0.0, total_budget=60)
    spent = sum(level.evaluations for level in result.levels)
    assert spent <= 60 + 2 * 12  # each game's last round may overrun by one antithetic pair
    assert result.levels[0].evaluations <= 60 // len(result.levels) + 2 * len(DOCUMENTS)


@pytest.mark.parametrize(
    "options,message",
    [({"total_budget": 0}, "total_budget"), ({"confidence": 1.0}, "confidence"), ({"adaptive": True, "confidence": "high"}, "confidence"),
     ({"adaptive": "yes"}, "adaptive")],
)
def test_bad_allocation_options_name_the_field(tiny_explainer, options, message):
    with pytest.raises(ValueError, match=message):
        tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", **options)


def test_allocation_shares_what_is_left_evenly():
    allocation = Allocation(total_budget=300)
    assert allocation.level_budget(None, 0, 3) == 100
    assert allocation.level_budget(50, 0, 3) == 50
    assert allocation.level_budget(None, 250, 2) == 25
    assert Allocation().level_budget(70, 1000, 1) == 70
