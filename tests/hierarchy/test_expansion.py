"""A level's decisions: budget shares that add up exactly, and TextGenSHAP's expansion rule."""
from __future__ import annotations

import numpy as np
import pytest
from longshap.hierarchy.estimators import get_estimator
from longshap.hierarchy.expansion import choose_expansions, split_budget


class _Visible:
    def visible_columns(self) -> list[int]:
        return [0]


@pytest.mark.parametrize("budget", [1, 3, 7, 40, 1001])
def test_shares_add_up_to_the_budget_in_proportion_to_game_size(budget):
    sizes = [2, 10, 3, 1]
    shares = split_budget(budget, get_estimator("permutation"), sizes)
    assert sum(shares) == budget and all(s >= 0 for s in shares)
    if budget >= 100:
        assert shares[1] > shares[2] > shares[3]


def test_defaults_are_the_estimators_own_unless_they_exceed_the_cap():
    estimator = get_estimator("permutation")
    assert split_budget(None, estimator, [5, 5]) == [estimator.default_budget(5)] * 2
    assert sum(split_budget(None, estimator, [500, 500], cap=100)) == 100


def test_units_are_expanded_when_value_minus_stderr_reaches_the_threshold():
    values = np.array([[0.5], [0.3], [0.05]])
    stderr = np.array([[0.1], [0.25], [0.0]])
    reference = (np.array([1.0]), np.array([0.0]))
    chosen = choose_expansions(["a", "b", "c"], values, stderr, reference, _Visible(), threshold=0.1, cap=None)
    assert chosen == {"a"}  # b's interval reaches below the threshold, c is too small
    assert choose_expansions(["a", "b", "c"], values, stderr, (np.array([0.0]), np.array([0.0])), _Visible(), 0.1, None) == set()
