"""Leave-one-out (feature ablation) attributions."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from longshap.hierarchy.estimators._stats import average_over_contexts, check_inputs
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, register
from longshap.hierarchy.games import Context, MemoisedGame


@register("loo")
class LeaveOneOut:
    """v(N) - v(N without i): the cheapest baseline, n + 1 coalitions in one batch.

    Not a Shapley estimate: it only sees each player's contribution on top of all the
    others, so redundant players all get (near) zero. Budget: n + 1 evaluations per
    context, always at least one context; stochastic games get `budget // (n + 1)`
    contexts (enumerated with their probabilities when the support is that small).
    """

    name: ClassVar[str]  # set by @register

    def default_budget(self, n_players: int) -> int:
        return n_players + 1

    def minimum_budget(self, n_players: int) -> int:
        return n_players + 1

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
        coalitions = np.vstack([np.ones((1, n), dtype=bool), ~np.eye(n, dtype=bool)])

        def attribute_in(context: Context) -> np.ndarray:
            values = game.evaluate(coalitions, [context] * len(coalitions))
            return values[0] - values[1:]

        values, stderr, contexts = average_over_contexts(
            game, budget, len(coalitions), rng, attribute_in, target_stderr, progress, start
        )
        return Estimate(values, stderr, game.evaluations - start, self.name, samples=contexts)
