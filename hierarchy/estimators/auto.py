"""method="auto": the estimator that bench/estimators_vs_shapiq.py shows best for the game and budget."""
from __future__ import annotations

import numpy as np

from math import comb

from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler, get_estimator, register
from longshap.hierarchy.estimators.odd import MIN_SPARE, TOP_PLAYERS
from longshap.hierarchy.games import MemoisedGame


REGRESSION_FROM = 3.5
"""Budgets from this many evaluations per player on go to the regression (`leverage`) on plain games."""
ADJUSTED_FROM = 6
"""From this many evaluations per player on, plain games go to `regression_adjusted`."""
ODD_SLACK = 1.0
"""`odd` runs once its pairs cover its full third-order expansion this many times over (see `odd_fits`)."""
CONTEXT_REGRESSION_FROM = 4
"""The same threshold for games with outer contexts (Owen subgames), whose regression is `kernel`."""


def odd_fits(n: int, budget: int) -> bool:
    """Whether `odd` can fit every third-order candidate with pairs to spare, as its cross-validation needs.

    Then a game whose odd part is at most cubic is recovered exactly, and the full expansion
    competes with the screened ones (see `odd.choose_terms`); below it, `odd` has to guess
    which triples matter from few pairs, and `regression_adjusted` was as accurate or better.
    """
    pairs = (budget - 2) // 2
    return n >= 3 and pairs - n - n // 2 - MIN_SPARE >= ODD_SLACK * comb(min(n, TOP_PLAYERS), 3)


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
    `odd` (a sparse odd-part regression) takes over once its full third-order expansion fits
    the pairs (`odd_fits`: from 28n at 10 players, 41n at 12, 74n at 16): against shapiq
    1.8's best method (`make bench-shapiq`, i.e. `.venv-shapiq/bin/python -m
    bench.estimators_vs_shapiq`, 10 seeds) `odd` was 0.12x at 50n, where auto ran it on the
    10- and 12-player games (the third-order game exactly) and `regression_adjusted` on the
    others (0.13x overall), while at 20n, below that point, `odd` was 0.95x and `proxy` 0.91x
    against `regression_adjusted`'s 0.88x. At 5n `regression_adjusted` was 0.93x and
    `leverage` 0.98x in that run, short of a reason to move the 6n threshold.
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
    return "odd" if odd_fits(game.n_players, budget) else "regression_adjusted"


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
