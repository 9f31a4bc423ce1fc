"""Banzhaf values by maximum-sample-reuse Monte Carlo (Wang & Jia 2023, "Data Banzhaf")."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._stats import check_inputs, done, growing_batch, max_groups, report, student_scale
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler, register
from longshap.hierarchy.games import MemoisedGame, pad_columns


def _side_moments(members: np.ndarray, centred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-player count, mean and variance (ddof=1) of the sampled values on one side of the split."""
    counts = members.sum(axis=0).astype(np.float64)[:, None]
    sums = members.T @ centred
    mean = np.divide(sums, counts, out=np.zeros_like(sums), where=counts > 0)
    spread = members.T @ centred**2 - counts * mean**2
    var = np.divide(spread, counts - 1, out=np.full_like(sums, np.inf), where=counts > 1)
    return counts, mean, np.maximum(var, 0.0)


@register("banzhaf")
class Banzhaf(Sampler):
    """beta_i = mean of v(S) over sampled S containing i minus the mean over S without i.

    Every coalition is a uniform (Bernoulli(1/2)) subset, so each sample informs all n
    players at once, which is why this needs far fewer evaluations than sampling
    marginal contributions. This is the Banzhaf value, not the Shapley value: it
    weights all coalition sizes equally and its values need not sum to
    v(N) - v(empty). Each sample gets its own outer context. The standard error is
    sqrt(var_in / n_in + var_out / n_out), widened to a Student-t band on the smaller
    side's degrees of freedom (a lower bound on Welch's); a player with fewer than two samples on a
    side gets value 0 and stderr inf.

    Budget: one evaluation per sample at most (repeats are memoised), so batches
    (2(n + 1) samples, growing to a quarter of the samples so far) are capped by the
    remaining budget, which is never exceeded; at most 4 * budget samples (binds only
    on games with few coalitions).
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
        member_blocks: list[np.ndarray] = []
        output_blocks: list[np.ndarray] = []
        samples = 0
        cap = max_groups(budget, 1)
        while (rows := min(growing_batch(2 * (n + 1), samples), budget - (game.evaluations - start), cap - samples)) > 0:
            members = rng.random((rows, n)) < 0.5
            output_blocks.append(game.evaluate(members, [game.sample_context(rng) for _ in range(rows)]))
            member_blocks.append(members)
            samples += rows
            values, stderr = self.fit(np.vstack(member_blocks), pad_columns(output_blocks))
            report(progress, game.evaluations - start, budget, values, stderr)
            if done(stderr, target_stderr, samples):
                break
        return Estimate(values, stderr, game.evaluations - start, self.name, samples=samples)

    def fit(self, members: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and standard errors from the samples so far: difference of the two sides' means."""
        centred = outputs - outputs.mean(axis=0)
        count_in, mean_in, var_in = _side_moments(members, centred)
        count_out, mean_out, var_out = _side_moments(~members, centred)
        dof = np.minimum(count_in, count_out) - 1  # Welch's degrees of freedom are at least this
        widen = np.vectorize(student_scale)(dof)
        stderr = widen * np.sqrt(var_in / np.maximum(count_in, 1) + var_out / np.maximum(count_out, 1))
        return np.where(np.isfinite(stderr), mean_in - mean_out, 0.0), stderr
