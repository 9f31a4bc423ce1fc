"""method="auto": the estimator that bench/estimators_vs_shapiq.py shows best for the game and budget."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler, get_estimator, register
from longshap.hierarchy.games import MemoisedGame


REGRESSION_FROM = 3.5
"""Budgets from this many evaluations per player on go to the regression (`leverage`) on plain games."""
ADJUSTED_FROM = 6
"""From this many evaluations per player on, plain games go to `regression_adjusted`."""
SELECT_FROM = 12
"""From this many evaluations per player on, plain games go to `select` (every paired-design model, the best kept)."""
CONTEXT_REGRESSION_FROM = 4
"""The same threshold for games with outer contexts (Owen subgames), whose regression is `kernel`."""


def choose(game: MemoisedGame, budget: int) -> str:
    """Name of the estimator to run on `game` with `budget` evaluations.

    Plain games (one outer context): below 3.5n evaluations antithetic permutations
    (`permutation`: whole pairs, then a partial pair with what is left, so the whole
    budget is spent). They were the most accurate at 2n on every benchmark game, where
    a regression has fewer pairs than parameters, and at 3n `leverage` was 4% worse
    (40 seeds, geometric mean over the non-trivial games). From 3.5n on leverage
    (distinct stratified pairs, small strata enumerated) is ahead on 4 of 5 games (7%
    at 3.5n, 13% at 3.75n) and reports a finite standard error for every player, where
    permutations still leave the players outside the partial pair at inf; from 5n up it
    was the most accurate LongSHAP estimator until `regression_adjusted` (a cross-fitted
    surrogate plus Monte Carlo on its residual) overtook it: its error over leverage's
    (`python -m bench.estimators_vs_shapiq --multiples 4 5 6 8 10`, geometric mean over
    the six games, 10 seeds) is 8.8 at 4n (too few pairs to fit and cross-check), 0.95
    at 5n but 1.27 on the third-order game, 0.91 at 6n, 0.81 at 8n and 0.83 at 10n.
    `select` takes over at 12n: it fits `leverage`, `regression_adjusted`, `proxy` and `odd`
    to the one paired sample they share and keeps the one reporting the smallest variance,
    so a sparse higher-order game gets `odd` (exact once its third-order expansion fits) and
    a smooth saturating one a proxy. Against `regression_adjusted` (and `odd` where its full
    expansion fitted) on the benchmark's games, it was behind at 8n, level at 12n and ahead
    from 15n on, by more the larger the budget (`docs/benchmarks.md` has the figures).
    Games with outer contexts (Owen subgames)
    switch at 4n instead, to `kernel`, which draws a context per group of pairs and treats contexts as
    clusters (leverage would hand them to it anyway). Below 4n a regression has fewer
    pairs than players and cannot tell the values apart: on the demo's word level (24
    words, 54 evaluations) kernel ranked "a" first at +6.1 ± 19.9, where nested
    antithetic permutations put the answer "1998," first with a small standard error.
    """
    support = game.context_support(limit=1)
    plain = support is not None and len(support) == 1
    if budget < (REGRESSION_FROM if plain else CONTEXT_REGRESSION_FROM) * game.n_players:
        return "permutation"
    if not plain:
        return "kernel"
    if budget < ADJUSTED_FROM * game.n_players:
        return "leverage"
    return "regression_adjusted" if budget < SELECT_FROM * game.n_players else "select"


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
