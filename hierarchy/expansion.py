"""What a level decides: how its budget is shared among its games, and which of its units are expanded.

A unit's importance is its value in the direction of the total effect, less its
standard error, on the visible output where that is largest; TextGenSHAP's rule
expands the units whose importance reaches the level's threshold times |effect|.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from longshap.hierarchy.estimators.base import Estimator


def split_budget(budget: int | None, estimator: Estimator, sizes: Sequence[int], cap: int | None = None) -> list[int]:
    """Share a per-level budget among the level's games in proportion to their size; by default each game gets the estimator's own.

    The shares add up to the budget exactly (largest remainders), so a level never
    plans more than it was given; a game whose share is 0 is not sampled (its units
    stay unknown). Defaults adding up to more than `cap` give way to `cap`.
    """
    if budget is None:
        defaults = [estimator.default_budget(n) for n in sizes]
        if cap is None or sum(defaults) <= cap:
            return defaults
        budget = cap
    weights = np.array([n + 1 for n in sizes], dtype=float)
    exact = budget * weights / weights.sum()
    shares = np.floor(exact).astype(int)
    for index in np.argsort(-(exact - shares), kind="stable")[: budget - int(shares.sum())]:
        shares[index] += 1
    return [int(share) for share in shares]


def importance(values, stderr, reference, value_fn) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Per unit, its value in the direction of the total effect and that value's stderr, on the visible
    output where value - stderr is largest; with the effect's scale. None when there is no effect.

    A NaN stderr (gradient methods: nothing sampled) counts as none; inf still blocks expansion."""
    columns = [c for c in value_fn.visible_columns() if c < values.shape[1]]
    full, empty = (np.pad(r, (0, max(0, values.shape[1] - len(r))))[columns] for r in reference)
    effect = full - empty
    scale = float(np.max(np.abs(effect))) if len(effect) else 0.0
    if scale == 0.0:
        return None
    sign = np.where(effect >= 0, 1.0, -1.0)
    signed, signed_stderr = sign * values[:, columns], np.nan_to_num(stderr[:, columns], nan=0.0, posinf=np.inf)
    best = np.argmax(signed - signed_stderr, axis=1)
    rows = np.arange(len(values))
    return signed[rows, best], signed_stderr[rows, best], scale

def choose_expansions(order, values, stderr, reference, value_fn, threshold, cap) -> set[str]:
    """TextGenSHAP's rule on every visible output: expand when sign*value - stderr >= threshold * |effect|."""
    measured = importance(values, stderr, reference, value_fn)
    if measured is None:
        return set()
    scores, score_stderr, scale = measured
    margin = scores - score_stderr
    passing = [i for i in np.argsort(-margin, kind="stable") if margin[i] >= threshold * scale]
    if cap is not None:
        passing = passing[:cap]
    return {order[i] for i in passing}
