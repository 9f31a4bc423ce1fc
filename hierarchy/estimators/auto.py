"""method="auto": the estimator that bench/estimators_vs_shapiq.py shows best for the game and budget."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler, get_estimator, register
from longshap.hierarchy.games import MemoisedGame


REGRESSION_FROM = 4
"""Budgets from this many evaluations per player on go to the regression (`leverage`)."""


def choose(game: MemoisedGame, budget: int) -> str:
    """Name of the estimator to run on `game` with `budget` evaluations.

    Plain games (one outer context): below 4n evaluations one antithetic pair of
    permutations (`permutation`) was the most accurate on every benchmark game at 2n,
    where a regression has fewer pairs than parameters; from 5n up `leverage` (distinct
    stratified pairs, small strata enumerated) was the most accurate LongSHAP estimator.
    Games with outer contexts (Owen subgames) follow the same budget rule with `kernel`
    as the regression, which draws a context per group of pairs and treats contexts as
    clusters (leverage would hand them to it anyway). Below 4n a regression has fewer
    pairs than players and cannot tell the values apart: on the demo's word level (24
    words, 54 evaluations) kernel ranked "a" first at +6.1 ± 19.9, where nested
    antithetic permutations put the answer "1998," first with a small standard error.
    """
    if budget < REGRESSION_FROM * game.n_players:
        return "permutation"
    support = game.context_support(limit=1)
    return "kernel" if support is None or len(support) != 1 else "leverage"


@register("auto")
class Auto(Sampler):
    """Delegates to the estimator `choose` picks; the result's `method` names the one used."""

    def attribute(
        self,
        game: MemoisedGame,
        budget: int,
        rng: np.random.Generator,
        target_stderr: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Estimate:
        result = get_estimator(choose(game, budget)).attribute(game, budget, rng, target_stderr, progress)
        result.extras["requested"] = self.name
        return result
