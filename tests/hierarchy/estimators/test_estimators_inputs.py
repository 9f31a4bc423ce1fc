"""Bad input fails early with a message that says what is wrong."""
from __future__ import annotations

import numpy as np
import pytest

from longshap.hierarchy.estimators import ESTIMATORS, estimate, get_estimator
from longshap.hierarchy.games import FunctionGame, MemoisedGame
from synthetic_games import additive

METHODS = ["exact", "permutation", "kernel", "leverage", "auto", "banzhaf", "banzhaf_ls", "loo", "regression_adjusted", "kadd", "odd", "proxy"]


def test_all_methods_are_registered():
    assert set(METHODS) <= set(ESTIMATORS)
    assert all(get_estimator(name).name == name for name in METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_bad_sizes_and_budgets(method):
    value_fn = additive(np.ones(3))
    with pytest.raises(ValueError, match="n must be a positive integer"):
        estimate(value_fn, 0, method)
    with pytest.raises(ValueError, match="budget must be a positive integer"):
        estimate(value_fn, 3, method, budget=0)
    with pytest.raises(ValueError, match="budget must be a positive"):
        get_estimator(method).attribute(MemoisedGame(FunctionGame(value_fn, 3)), 0, np.random.default_rng(0))


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown method 'shapley'.*'permutation'"):
        estimate(additive(np.ones(3)), 3, "shapley")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "value_fn, message",
    [
        (lambda z: np.zeros(len(z) + 1), r"shape \(\d+,\)"),
        (lambda z: np.zeros((len(z), 2, 2)), r"shape \(\d+, 2, 2\)"),
        (lambda z: np.where(z[:, 0], 1.0, np.nan), "non-finite"),
        (lambda z: np.where(z[:, 1], 1.0, -np.inf), "non-finite"),
    ],
    ids=["rows", "ndim", "nan", "inf"],
)
def test_bad_value_functions(method, value_fn, message):
    with pytest.raises(ValueError, match=message):
        estimate(value_fn, 4, method, budget=200)
