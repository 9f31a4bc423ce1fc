"""Permutation sampling of Shapley values with antithetic (reversed) permutations."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._stats import MIN_GROUPS, RunningMoments, check_inputs, done, max_groups, report, student_scale
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler, register
from longshap.hierarchy.games import Context, MemoisedGame, pad_to

MAX_PAIRS_PER_CALL = 8
PRIOR_PAIRS = 2
"""Pseudo-samples, a typical swing apart, added to each player's samples (see `_stderr`)."""
POOLED_DOF = 2


def _stderr(moments: RunningMoments) -> np.ndarray:
    """Per-player standard error, each player's samples padded with PRIOR_PAIRS pseudo-samples.

    The pseudo-samples lie at mean +- R/2, where R is the typical size of a swing: the
    root mean square, over players whose samples varied at all, of their sample ranges
    (max - min). Why not the sample variance alone, or shrinkage towards the players'
    pooled variance (the previous rule): a weighted voting game's samples are one-hot
    (an antithetic pair has one pivotal player), so after m pairs a player with value
    ~0.1 has seen no swing with probability ~0.9^m and reports variance 0; by the rule of
    three an event unseen in m draws may still have probability ~3/m, so its variance
    may be ~R^2/m, far above the pooled variance's share (coverage was 0.78 at 20n). The
    padding gives every player at least PRIOR_PAIRS R^2 / 4 / (m + PRIOR_PAIRS - 1),
    Agresti-Coull's "one success and one failure" for a 0/1 game; it fades as pairs
    accrue, and where samples vary smoothly the range of m samples is a few standard
    deviations, so it changes little. Players that never varied do not enter R (they
    would hide the swings of the others), and one dominant player counts once. A game
    whose samples never vary (pairwise: antithetic pairs are exact) keeps stderr 0 once
    at least n within-player comparisons agree; with fewer, no spread seen yet says
    nothing: inf. The result is widened to a Student-t band on the Welch-Satterthwaite
    degrees of freedom of own plus pseudo variance (the pseudo part worth POOLED_DOF
    players); inf for a player with a single sample.
    """
    count = moments.count
    spread = moments.high - moments.low
    measured = count[:, 0] >= 2
    if not measured.any():
        return np.full_like(moments.mean, np.inf)
    comparisons = float(np.sum(count[measured] - 1))
    swung = (spread > 0) & measured[:, None]
    typical = np.sqrt(np.divide((spread**2 * swung).sum(axis=0), swung.sum(axis=0), out=np.zeros(spread.shape[1]), where=swung.any(axis=0)))
    dof_own = np.maximum(count - 1, 1)
    own = moments.m2 / (count - 1 + PRIOR_PAIRS)
    prior = np.broadcast_to(PRIOR_PAIRS * typical**2 / 4, own.shape) / (count - 1 + PRIOR_PAIRS)
    dof = np.divide(
        (own + prior) ** 2, own**2 / dof_own + prior**2 / (POOLED_DOF * dof_own),
        out=np.broadcast_to(dof_own, own.shape).astype(float), where=own + prior > 0,
    )
    stderr = np.sqrt((own + prior) / count) * np.vectorize(student_scale)(dof)
    unknown = (count < 2) | ((typical == 0) & (comparisons < len(count)))[None, :]
    return np.where(unknown, np.inf, stderr)


def _pair_rows(positions: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Coalitions S_q (the first q players of the forward order) for q in `steps`, then their complements.

    A permutation's reverse chain consists of the complements of the forward chain, so a
    pair of chains over steps q is these 2 len(steps) coalitions.
    """
    forward = positions[None, :] < steps[:, None]
    return np.vstack([forward, ~forward])


def _pair_sample(values: np.ndarray, positions: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Each player's antithetic sample (forward + backward marginal) / 2 from `_pair_rows` values.

    The player at forward position q adds v(S_{q+1}) - v(S_q) going forward and
    v(N - S_q) - v(N - S_{q+1}) going backward (its predecessors there are the players after it).
    """
    index = {int(q): row for row, q in enumerate(steps)}
    now = np.array([index[int(q)] for q in positions])
    after = np.array([index[int(q) + 1] for q in positions])
    forward, complement = values[: len(steps)], values[len(steps) :]
    return (forward[after] - forward[now] + complement[now] - complement[after]) / 2


@register("permutation")
class Permutation(Sampler):
    """Average marginal contributions along random permutations, each paired with its reverse.

    A permutation and its reverse see every player with complementary predecessor sets,
    which cancels much of the variance for near-additive games; both chains (n + 1
    coalitions each, from empty to full) share one outer context, and as many pairs as
    the remaining budget surely affords (up to 8) go to the game in one call. Each chain
    telescopes, so the values sum to v(N) - v(empty) exactly for plain games. The
    standard error treats each pair's averaged contributions as one iid sample per
    player (see `_stderr`), widened to a Student-t band for the few-pair case; a single
    pair says nothing about the spread between pairs (its two chains are deliberately
    dependent, and agree exactly on near-additive games), so its standard error is inf.

    Budget: a pair costs at most 2n new evaluations (the chains share the empty and
    full coalitions); pairs continue while another one fits, and at most four times the
    pairs the budget buys without memoisation (binds only on games with few coalitions).
    The budget is never exceeded: below 2n not one pair fits, and the budget goes to one
    partial pair alone (below), whose uncovered players stay unknown (value 0, stderr inf).
    What is left, r < 2n evaluations, goes to a *partial pair*: both chains of one more
    antithetic pair, but only over a window of m = r // 2 - 1 consecutive positions
    starting at a uniformly random position and wrapping around (2 (m + 1) coalitions at
    most), which gives one more sample to the m players the window covers. Because the
    window's start is uniform and wraps, whether a player is covered does not depend on
    the permutation, so a covered player's extra sample has exactly the distribution of
    a whole pair's and its mean stays unbiased; the standard error uses each player's
    own count. The m extra samples' share of the values' sum, sum_i (new mean - old
    mean), has expectation 0 and is taken back equally from every player, which keeps
    the estimate unbiased and the sum exactly v(N) - v(empty) on plain games. Without
    it, at 3n evaluations a third of the budget would be left unspent.
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
        steps = np.arange(n + 1)
        moments = RunningMoments(n)
        cap = max_groups(budget, 2 * n)
        spent = 0
        if 2 * n > budget:
            return self._window_only(game, rng, moments, budget, start, progress)
        while True:
            # As many pairs per call as the budget surely affords: a model engine is
            # fastest on big batches, and the statistics do not depend on the grouping.
            pairs = int(np.clip((budget - spent) // (2 * n), 1, min(MAX_PAIRS_PER_CALL, cap - moments.samples)))
            if target_stderr is not None:  # stop close to the target: the minimum groups first, then doubling
                pairs = min(pairs, max(MIN_GROUPS - moments.samples, moments.samples))
            contexts: list[Context] = []
            orders = [rng.permutation(n) for _ in range(pairs)]
            for _ in range(pairs):
                contexts += [game.sample_context(rng)] * (2 * n + 2)
            chains = game.evaluate(np.vstack([_pair_rows(positions, steps) for positions in orders]), contexts)
            for positions, chain in zip(orders, np.split(chains, pairs)):
                moments.add(_pair_sample(chain, positions, steps))
            values, stderr = moments.mean.copy(), _stderr(moments)  # a snapshot: later samples update the moments in place
            spent = game.evaluations - start
            report(progress, spent, budget, values, stderr)
            if done(stderr, target_stderr, moments.samples):
                break
            if spent + 2 * n > budget or moments.samples >= cap:
                window = min((budget - spent) // 2 - 1, n - 1)
                if window >= 1 and moments.samples < cap:
                    values, stderr = self._partial_pair(game, rng, moments, window)
                    spent = game.evaluations - start
                    report(progress, spent, budget, values, stderr)
                break
        return Estimate(values, stderr, spent, self.name, samples=moments.samples, extras={"permutations": 2 * moments.samples})

    def _window_only(
        self, game: MemoisedGame, rng: np.random.Generator, moments: RunningMoments, budget: int, start: int, progress: ProgressCallback | None
    ) -> Estimate:
        """A budget below one pair: one partial pair over what it affords; each covered player's sample is unbiased.

        Nothing is taken back (there is no whole-pair estimate to keep the sum of), and a
        single sample has no spread, so every standard error is inf: the values are a
        start, not a measurement."""
        n = game.n_players
        window = min(budget // 2 - 1, n - 1)
        values, stderr = np.zeros((n, 1)), np.full((n, 1), np.inf)
        if window >= 1:
            values, stderr = self._partial_pair(game, rng, moments, window, rebalance=False)
        spent = game.evaluations - start
        report(progress, spent, budget, values, stderr)
        return Estimate(values, stderr, spent, self.name, samples=0, extras={"permutations": 0, "partial_window": max(window, 0)})

    @staticmethod
    def _partial_pair(
        game: MemoisedGame, rng: np.random.Generator, moments: RunningMoments, window: int, rebalance: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """One more pair over `window` consecutive positions (wrapping) from a uniform start; see the class doc."""
        n = game.n_players
        context = game.sample_context(rng)
        positions = rng.permutation(n)
        covered_positions = (rng.integers(n) + np.arange(window)) % n
        covered = np.isin(positions, covered_positions)
        steps = np.union1d(covered_positions, covered_positions + 1)
        values = game.evaluate(_pair_rows(positions, steps), [context] * (2 * len(steps)))
        before = moments.mean.copy()
        sample = np.zeros((n, values.shape[1]))
        sample[covered] = _pair_sample(values, positions[covered], steps)
        moments.add(sample, covered)
        if not rebalance:
            return moments.mean.copy(), _stderr(moments)
        before = pad_to(before, moments.mean.shape[1])
        shift = (moments.mean - before).sum(axis=0) / n
        return moments.mean - shift, _stderr(moments)
