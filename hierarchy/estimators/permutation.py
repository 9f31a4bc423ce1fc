"""Permutation sampling of Shapley values with antithetic (reversed) permutations."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._stats import MIN_GROUPS, RunningMoments, check_inputs, done, max_groups, report, student_scale
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler, register
from longshap.hierarchy.games import MemoisedGame


def _marginals(chain: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Each player's marginal contribution along a chain of n + 1 growing coalitions."""
    return np.diff(chain, axis=0)[positions]


MAX_PAIRS_PER_CALL = 8
PRIOR_PAIRS = 2
"""Weight, in pairs, of the players' pooled variance in each player's variance (see `_pooled_stderr`)."""
POOLED_DOF = 2


def _pooled_stderr(moments: RunningMoments) -> np.ndarray:
    """Per-player standard error, shrunk towards the players' pooled variance while pairs are few.

    With a handful of pairs a player's marginal contributions are often all equal (a
    voting game's swings are rare), and its sample variance 0 says nothing: the other
    players' spread is the best evidence of what one more pair could show. The pooled
    variance enters with the weight of PRIOR_PAIRS pairs, which fades as pairs accrue;
    the result is widened to a Student-t band on the mix's Welch-Satterthwaite degrees
    of freedom; inf for a single pair.
    """
    count = moments.count
    if count < 2:
        return np.full_like(moments.mean, np.inf)
    variance = moments.m2 / (count - 1)
    own, pooled = count * variance / (count + PRIOR_PAIRS), PRIOR_PAIRS * variance.mean(axis=0) / (count + PRIOR_PAIRS)
    # Welch-Satterthwaite degrees of freedom of the mix, counting the pooled part as worth POOLED_DOF
    # players only: players differ in spread, so the pool is a rough guide, not n independent ones.
    dof = np.divide(
        (own + pooled) ** 2, own**2 / (count - 1) + pooled**2 / (POOLED_DOF * (count - 1)),
        out=np.full_like(own, count - 1.0), where=own + pooled > 0,
    )
    return np.sqrt((own + pooled) / count) * np.vectorize(student_scale)(dof)


@register("permutation")
class Permutation(Sampler):
    """Average marginal contributions along random permutations, each paired with its reverse.

    A permutation and its reverse see every player with complementary predecessor sets,
    which cancels much of the variance for near-additive games; both chains (n + 1
    coalitions each, from empty to full) share one outer context, and as many pairs as
    the remaining budget surely affords (up to 8) go to the game in one call. Each chain telescopes, so the values sum to v(N) - v(empty) exactly for
    plain games. The standard error treats each pair's averaged contributions as one
    iid sample, widened to a Student-t band for the few-pair case; a single pair says
    nothing about the spread between pairs (its two chains are deliberately dependent,
    and agree exactly on near-additive games), so its standard error is inf.

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
        spent = 0
        while True:
            # As many pairs per call as the budget surely affords: a model scorer is
            # fastest on big batches, and the statistics do not depend on the grouping.
            pairs = int(np.clip((budget - spent) // (2 * n), 1, min(MAX_PAIRS_PER_CALL, cap - moments.count)))
            if target_stderr is not None:  # stop close to the target: the minimum groups first, then doubling
                pairs = min(pairs, max(MIN_GROUPS - moments.count, moments.count))
            rows, contexts, orders = [], [], []
            for _ in range(pairs):
                context = game.sample_context(rng)
                positions = rng.permutation(n)
                reverse = n - 1 - positions
                rows += [positions < steps, reverse < steps]
                contexts += [context] * (2 * n + 2)
                orders.append((positions, reverse))
            chains = game.evaluate(np.vstack(rows), contexts).reshape(pairs, 2, n + 1, -1)
            for (positions, reverse), (forward_chain, backward_chain) in zip(orders, chains):
                forward, backward = _marginals(forward_chain, positions), _marginals(backward_chain, reverse)
                moments.add((forward + backward) / 2)
            values, stderr = moments.mean, _pooled_stderr(moments)
            spent = game.evaluations - start
            report(progress, spent, budget, values, stderr)
            if done(stderr, target_stderr, moments.count) or spent + 2 * n > budget or moments.count >= cap:
                break
        return Estimate(values, stderr, spent, self.name, samples=moments.count, extras={"permutations": 2 * moments.count})
