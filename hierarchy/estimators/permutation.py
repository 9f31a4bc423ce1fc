"""Permutation sampling of Shapley values with antithetic (reversed) permutations."""
from __future__ import annotations

import numpy as np

from hierarchy.estimators._stats import RunningMoments, check_inputs, done, max_groups, report
from hierarchy.estimators.base import Estimate, ProgressCallback, register
from hierarchy.games import MemoisedGame


def _marginals(chain: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Each player's marginal contribution along a chain of n + 1 growing coalitions."""
    return np.diff(chain, axis=0)[positions]


@register("permutation")
class Permutation:
    """Average marginal contributions along random permutations, each paired with its reverse.

    A permutation and its reverse see every player with complementary predecessor sets,
    which cancels much of the variance for near-additive games; both chains (n + 1
    coalitions each, from empty to full) go to the game in one batch under one outer
    context. Each chain telescopes, so the values sum to v(N) - v(empty) exactly for
    plain games. The standard error treats each pair's averaged contributions as one
    iid sample; with a single pair (long sentences on a small budget) it treats the two
    chains as separate samples, which overestimates it when, as intended, the reversed
    chain is negatively correlated with the first: wide but honest, rather than inf.

    Budget: a pair costs at most 2n new evaluations (the chains share the empty and
    full coalitions); pairs continue while another one fits, always at least one pair
    (so a budget below 2n is exceeded by that one batch) and at most four times the
    pairs the budget buys without memoisation (binds only on games with few coalitions).
    """


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
        steps = np.arange(n + 1)[:, None]
        moments = RunningMoments()
        cap = max_groups(budget, 2 * n)
        while True:
            context = game.sample_context(rng)
            positions = rng.permutation(n)
            reverse = n - 1 - positions
            chains = game.evaluate(np.vstack([positions < steps, reverse < steps]), [context] * (2 * n + 2))
            forward, backward = _marginals(chains[: n + 1], positions), _marginals(chains[n + 1 :], reverse)
            moments.add((forward + backward) / 2)
            values, stderr = moments.mean, moments.stderr()
            if moments.count == 1:
                stderr = np.abs(forward - backward) / 2
            spent = game.evaluations - start
            report(progress, spent, budget, values, stderr)
            if done(stderr, target_stderr, moments.count) or spent + 2 * n > budget or moments.count >= cap:
                break
        return Estimate(values, stderr, spent, self.name, samples=moments.count, extras={"permutations": 2 * moments.count})
