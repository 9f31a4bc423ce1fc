"""Faithfulness metrics against hand-computed numbers on a synthetic model p = sigmoid(sum of kept weights)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from longshap.hierarchy.metrics import (
    AOPC_FRACTIONS, ablation_masks, aopc, comprehensiveness, deletion_curve, lds, sufficiency, top_k_drop, top_k_mask,
)

WEIGHTS = np.array([2.0, -1.0, 0.5, 3.0, 0.0, -0.5, 1.0, 0.25, -2.0, 1.5])


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


class Model:
    """p(ŷ | kept features) = sigmoid(bias + sum of kept weights); records every call."""

    def __init__(self, weights=WEIGHTS, bias=-1.0):
        self.weights, self.bias = np.asarray(weights), bias
        self.calls = []

    def __call__(self, keep):
        keep = np.asarray(keep, dtype=bool)
        self.calls.append(keep.copy())
        return sigmoid(self.bias + keep.astype(float) @ self.weights)


def test_top_k_mask_ceil_rule_and_at_least_one():
    values = [0.1, 5.0, -2.0, 3.0, 3.0]
    np.testing.assert_array_equal(top_k_mask(values, 0.01), [0, 1, 0, 0, 0])  # ceil(0.05) = 1
    np.testing.assert_array_equal(top_k_mask(values, 0.2), [0, 1, 0, 0, 0])  # exactly 1
    np.testing.assert_array_equal(top_k_mask(values, 0.21), [0, 1, 0, 1, 0])  # ceil(1.05) = 2
    np.testing.assert_array_equal(top_k_mask(values, 0.5), [0, 1, 0, 1, 1])  # ceil(2.5) = 3
    np.testing.assert_array_equal(top_k_mask(values, 1.0), [1, 1, 1, 1, 1])
    # Ties broken by position: the first of the two 3.0s goes in first.
    np.testing.assert_array_equal(top_k_mask([3.0, 3.0, 1.0], 0.34), [1, 1, 0])
    np.testing.assert_array_equal(top_k_mask([1.0, 3.0, 3.0], 0.5), [0, 1, 1])
    np.testing.assert_array_equal(top_k_mask([1.0, 3.0, 3.0], 0.2), [0, 1, 0])
    assert top_k_mask(np.arange(200.0), 0.01).sum() == 2
    assert top_k_mask(np.arange(201.0), 0.01).sum() == 3


@pytest.mark.parametrize("values, fraction", [([], 0.5), ([[1.0, 2.0]], 0.5), ([1.0], 0.0), ([1.0], 1.5), ([1.0], -0.1)])
def test_top_k_mask_invalid(values, fraction):
    with pytest.raises(ValueError):
        top_k_mask(values, fraction)


def test_sufficiency_and_comprehensiveness_by_hand():
    model = Model()
    full = sigmoid(-1.0 + WEIGHTS.sum())  # sum = 4.75 -> sigmoid(3.75)
    # Rationale at 20% of 10 features = the 2 highest weights: features 3 (3.0) and 0 (2.0).
    kept = sigmoid(-1.0 + 3.0 + 2.0)
    removed = sigmoid(-1.0 + WEIGHTS.sum() - 5.0)
    assert sufficiency(model, WEIGHTS, 0.2) == pytest.approx(1 - max(0.0, full - kept), abs=1e-12)
    assert comprehensiveness(model, WEIGHTS, 0.2) == pytest.approx(max(0.0, full - removed), abs=1e-12)
    # Hand numbers: sigmoid(3.75) = 0.9770226, sigmoid(4) = 0.9820138 (> full, so clipped), sigmoid(-1.25) = 0.2227001.
    assert comprehensiveness(model, WEIGHTS, 0.2) == pytest.approx(0.9770226 - 0.2227001, abs=1e-6)
    assert sufficiency(model, WEIGHTS, 0.2) == 1.0
    # The rows sent to the model: the full input, then the rationale (or its complement).
    np.testing.assert_array_equal(model.calls[0][0], np.ones(10, bool))
    np.testing.assert_array_equal(model.calls[0][1], top_k_mask(WEIGHTS, 0.2))
    np.testing.assert_array_equal(model.calls[1][1], ~top_k_mask(WEIGHTS, 0.2))


def test_sufficiency_below_one_when_rationale_is_not_enough():
    model = Model(bias=0.0)
    # Top 10% = feature 3 alone: p = sigmoid(3) < p(full) = sigmoid(4.75)
    expected = 1 - (sigmoid(4.75) - sigmoid(3.0))
    assert sufficiency(model, WEIGHTS, 0.1) == pytest.approx(expected, abs=1e-12)
    assert expected < 1
    # Clipped at zero: removing the *negative* features raises p, comprehensiveness stays 0.
    assert comprehensiveness(model, -WEIGHTS, 0.3) == 0.0


def test_aopc_averages_over_fractions():
    model = Model()
    result = aopc(model, WEIGHTS)
    assert result["fractions"] == list(AOPC_FRACTIONS)
    suff = [sufficiency(Model(), WEIGHTS, f) for f in AOPC_FRACTIONS]
    comp = [comprehensiveness(Model(), WEIGHTS, f) for f in AOPC_FRACTIONS]
    np.testing.assert_allclose(result["sufficiency"], suff, atol=1e-12)
    np.testing.assert_allclose(result["comprehensiveness"], comp, atol=1e-12)
    assert result["aopc_sufficiency"] == pytest.approx(np.mean(suff), abs=1e-12)
    assert result["aopc_comprehensiveness"] == pytest.approx(np.mean(comp), abs=1e-12)
    assert len(model.calls) == 1 and model.calls[0].shape == (1 + 2 * len(AOPC_FRACTIONS), 10)  # one batched call
    # Hand check of one entry: 50% -> top 5 features (3, 0, 9, 6, 2) removed.
    assert result["comprehensiveness"][-1] == pytest.approx(sigmoid(3.75) - sigmoid(3.75 - 8.0), abs=1e-12)
    custom = aopc(Model(), WEIGHTS, fractions=(0.1, 0.3))
    assert custom["fractions"] == [0.1, 0.3] and len(custom["sufficiency"]) == 2


def test_deletion_curve_for_an_additive_game():
    model = Model()
    curve = deletion_curve(model, WEIGHTS)
    assert curve.shape == (11,)
    assert curve[0] == pytest.approx(sigmoid(3.75))
    assert curve[-1] == pytest.approx(sigmoid(-1.0))
    order = np.argsort(-WEIGHTS, kind="stable")
    expected = [sigmoid(-1.0 + WEIGHTS.sum() - WEIGHTS[order[:k]].sum()) for k in range(11)]
    np.testing.assert_allclose(curve, expected, atol=1e-12)
    # Ranked by the true weights, p falls while positive features go, then rises as negative ones go.
    positives = int((WEIGHTS > 0).sum())
    assert np.all(np.diff(curve[: positives + 1]) < 0)
    assert np.all(np.diff(curve[positives + 1 :]) >= 0)
    # For a purely positive additive game the correctly ranked curve is monotone and the steepest.
    weights = np.array([0.3, 2.0, 1.0, 0.1])
    good = deletion_curve(Model(weights), weights)
    bad = deletion_curve(Model(weights), -weights)
    assert np.all(np.diff(good) < 0)
    assert good[0] == bad[0] and good[-1] == pytest.approx(bad[-1])
    assert good[1:-1].sum() < bad[1:-1].sum()


@pytest.mark.parametrize(
    "fn",
    [
        lambda keep: np.full(keep.shape[0], 1.5),  # not a probability
        lambda keep: np.full(keep.shape[0], np.nan),
        lambda keep: np.full(keep.shape[0] + 1, 0.5),  # wrong number of rows
        lambda keep: -np.ones(keep.shape[0]),
    ],
)
def test_invalid_probability_functions_raise(fn):
    with pytest.raises(ValueError, match="probability"):
        sufficiency(fn, WEIGHTS, 0.2)
    with pytest.raises(ValueError, match="probability"):
        deletion_curve(fn, WEIGHTS)
    with pytest.raises(ValueError, match="probability"):
        aopc(fn, WEIGHTS)


def test_invalid_values_raise():
    with pytest.raises(ValueError, match="values"):
        comprehensiveness(Model(), [], 0.2)
    with pytest.raises(ValueError, match="fraction"):
        aopc(Model(), WEIGHTS, fractions=(0.1, 2.0))
    assert math.isclose(sufficiency(Model(np.array([1.0])), [0.5], 1.0), 1.0)


def test_ablation_masks_half_keeps_each_feature_half_the_time():
    masks = ablation_masks(10, 4000, "half", np.random.default_rng(0))
    assert masks.shape == (4000, 10) and masks.dtype == np.bool_
    assert np.allclose(masks.mean(axis=0), 0.5, atol=0.03)


def test_ablation_masks_uniform_size_covers_every_size_equally_and_never_all_or_none():
    masks = ablation_masks(6, 5000, "uniform_size", np.random.default_rng(1))
    sizes = masks.sum(axis=1)
    assert sizes.min() == 1 and sizes.max() == 5
    assert np.allclose(np.bincount(sizes, minlength=6)[1:] / 5000, 0.2, atol=0.02)
    assert np.allclose(masks.mean(axis=0), 0.5, atol=0.03)  # given the size, the subset is uniform


def test_ablation_masks_refuse_an_unknown_kind_and_a_single_feature():
    with pytest.raises(ValueError, match="kind"):
        ablation_masks(5, 3, "keep_one", np.random.default_rng(0))
    with pytest.raises(ValueError, match="at least 2"):
        ablation_masks(1, 3, "half", np.random.default_rng(0))


def test_lds_is_one_for_the_true_linear_weights_and_negative_for_their_opposite():
    masks = ablation_masks(10, 64, "half", np.random.default_rng(2))
    truth = masks.astype(float) @ WEIGHTS - 1.0
    assert lds(WEIGHTS, masks, truth) == pytest.approx(1.0)
    assert lds(-WEIGHTS, masks, truth) == pytest.approx(-1.0)


def test_lds_ranks_ties_by_their_average_and_is_nan_when_nothing_varies():
    masks = np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    # predicted 1, 1, 2 (a tie), truth 0, 1, 2: Spearman of ranks (1.5, 1.5, 3) and (1, 2, 3)
    assert lds([1.0, 1.0], masks, [0.0, 1.0, 2.0]) == pytest.approx(np.sqrt(3) / 2)
    assert math.isnan(lds([0.0, 0.0], masks, [0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match="one log-probability per mask"):
        lds([1.0, 1.0], masks, [0.0, 1.0])


def test_top_k_drop_removes_the_highest_valued_features_in_one_call():
    model = Model()

    def logprob(keep):
        return np.log(model(keep))

    drops = top_k_drop(logprob, WEIGHTS, ks=(1, 2))
    full = np.log(sigmoid(-1.0 + WEIGHTS.sum()))
    assert drops[0] == pytest.approx(full - np.log(sigmoid(-1.0 + WEIGHTS.sum() - 3.0)))
    assert drops[1] == pytest.approx(full - np.log(sigmoid(-1.0 + WEIGHTS.sum() - 5.0)))
    assert len(model.calls) == 1 and model.calls[0].shape == (3, 10)
    with pytest.raises(ValueError, match="ks"):
        top_k_drop(logprob, WEIGHTS, ks=(11,))
