"""Exact Shapley values by enumerating every coalition."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from longshap.hierarchy.estimators._stats import all_coalitions, average_over_contexts, check_inputs, shapley_from_table
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, register
from longshap.hierarchy.games import Context, MemoisedGame

MAX_PLAYERS = 16


@register("exact")
class Exact:
    """All 2**n coalitions per context in one batch, combined with the Shapley weights.

    Budget: at least 2**n (`minimum_budget`; below it, callers get permutation sampling);
    the budget decides how many outer contexts a stochastic game gets (`budget // 2**n`). Contexts are enumerated with their probabilities when the support is
    that small (stderr 0), otherwise sampled (stderr across the sampled contexts; inf
    for a single draw, which says nothing about the spread).
    """

    name: ClassVar[str]  # set by @register

    def default_budget(self, n_players: int) -> int:
        return 2**n_players

    def minimum_budget(self, n_players: int) -> int:
        return 2**n_players

    def attribute(
        self,
        game: MemoisedGame,
        budget: int,
        rng: np.random.Generator,
        target_stderr: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Estimate:
        start = check_inputs(game, budget)
        n = game.n_players
        if n > MAX_PLAYERS:
            raise ValueError(
                f"exact enumerates 2**n coalitions and is limited to n <= {MAX_PLAYERS}, got n={n}; "
                "use a sampling method such as 'permutation' or 'kernel'"
            )
        coalitions = all_coalitions(n)

        def attribute_in(context: Context) -> np.ndarray:
            return shapley_from_table(game.evaluate(coalitions, [context] * len(coalitions)), n)

        values, stderr, contexts = average_over_contexts(
            game, budget, len(coalitions), rng, attribute_in, target_stderr, progress, start
        )
        return Estimate(values, stderr, game.evaluations - start, self.name, samples=contexts)
