"""Helpers shared by the estimators: coalition tables, padded sample statistics, stopping.

Kept in one place so every estimator pads growing output columns, computes standard
errors and decides when to stop in the same way.
"""
from __future__ import annotations

from math import comb
from typing import Callable, Iterable, Sequence

import numpy as np

from longshap.hierarchy.estimators.base import Progress, ProgressCallback
from longshap.hierarchy.games import Context, MemoisedGame, pad_to

MIN_GROUPS = 4
"""Sample groups required before `target_stderr` may stop sampling: fewer give unreliable variances."""

GROUP_SLACK = 4
"""Sample groups allowed, as a multiple of what the budget buys without memoisation."""


def check_inputs(game: MemoisedGame, budget: int) -> int:
    """Reject unusable arguments and return the evaluation count to measure spending from.

    Counting from the start lets callers reuse one memoised game across calls
    (e.g. nested sampling) while each call still gets its own budget.
    """
    if game.n_players < 1:
        raise ValueError(f"the game needs at least one player, got n_players={game.n_players}")
    if budget < 1:
        raise ValueError(f"budget must be a positive number of evaluations, got {budget}")
    return game.evaluations


def max_groups(budget: int, cost: int) -> int:
    """Cap on sample groups costing up to `cost` evaluations each.

    Memoised repeats are free, so a game with few distinct coalitions might never
    exhaust the budget; the cap ends sampling there after a few times the nominal count.
    """
    return max(1, GROUP_SLACK * budget // cost)


def stack_padded(samples: Sequence[np.ndarray]) -> np.ndarray:
    """Stack (n, k_i) samples with growing k into (S, n, K)."""
    width = max(sample.shape[-1] for sample in samples)
    return np.stack([pad_to(sample, width) for sample in samples])


class RunningMoments:
    """Welford mean, M2 and sample range of iid (n, k) samples whose k may grow, with per-player counts.

    Constant work per sample, so long runs on cheap, fully memoised games stay linear.
    A sample may cover only some players (`rows`): counts then differ between players
    (permutation's partial pair). Columns added later are 0 in earlier samples.
    """

    def __init__(self, n: int) -> None:
        self.count = np.zeros((n, 1))
        self.mean, self.m2, self.low, self.high = (np.zeros((n, 0)) for _ in range(4))

    def add(self, sample: np.ndarray, rows: np.ndarray | None = None) -> None:
        width = max(sample.shape[-1], self.mean.shape[-1])
        sample = pad_to(sample, width)
        self.mean, self.m2, self.low, self.high = (pad_to(a, width) for a in (self.mean, self.m2, self.low, self.high))
        rows = np.ones(len(sample), dtype=bool) if rows is None else rows
        first = rows & (self.count[:, 0] == 0)
        self.low[first], self.high[first] = sample[first], sample[first]
        self.count[rows] += 1
        delta = sample[rows] - self.mean[rows]
        self.mean[rows] += delta / self.count[rows]
        self.m2[rows] += delta * (sample[rows] - self.mean[rows])
        self.low[rows] = np.minimum(self.low[rows], sample[rows])
        self.high[rows] = np.maximum(self.high[rows], sample[rows])

    @property
    def samples(self) -> int:
        """Samples every player has."""
        return int(self.count.min())

    def stderr(self) -> np.ndarray:
        """Standard error of the mean (ddof=1); inf for a single sample, which says nothing about spread."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.count < 2, np.inf, np.sqrt(self.m2 / (self.count - 1) / self.count))


T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)
"""Student-t 97.5% quantiles for 1..10 degrees of freedom (printed tables)."""
Z975 = 1.959963984540054


def student_scale(dof: float) -> float:
    """Factor widening a standard error estimated on `dof` degrees of freedom to a Student-t one.

    Callers and users read value ± 1.96 stderr as a 95% band; with a variance estimated
    from few samples that band must use the t quantile instead, so the reported stderr is
    multiplied by t(dof) / 1.96. Below one degree of freedom the data cannot tell the error
    at all: inf. Above 10 a Cornish-Fisher expansion is accurate to better than 1e-3.
    """
    if dof < 1:
        return float("inf")
    if dof <= len(T975):
        return T975[int(dof) - 1] / Z975
    z = Z975
    quantile = z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)
    quantile += (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * dof**3)
    return quantile / Z975


def constrained_least_squares(gram: np.ndarray, moment: np.ndarray, total: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Minimise phi' A phi - 2 phi' b subject to sum(phi) = total, in closed form.

    phi = M b + u total with M = A^-1 - A^-1 1 1' A^-1 / (1' A^-1 1) and
    u = A^-1 1 / (1' A^-1 1). Returns phi, M and u: the delta method needs M and u to
    turn per-sample perturbations of A, b and the total into perturbations of phi.
    """
    if np.linalg.cond(gram) > 1e10:  # (near) singular: a small ridge, only then
        gram = gram + 1e-6 * np.trace(gram) / len(gram) * np.eye(len(gram))
    inverse = np.linalg.inv(gram)
    row = inverse.sum(axis=1)
    u = row / row.sum()
    m = inverse - np.outer(row, row) / row.sum()
    return m @ moment + np.outer(u, total), m, u


def growing_batch(minimum: int, done_so_far: int) -> int:
    """Batch size that grows with the samples taken, so re-solving after each batch costs O(total) overall."""
    return max(minimum, done_so_far // 4)


def done(stderr: np.ndarray, target_stderr: float | None, groups: int) -> bool:
    """Whether sampling may stop early: enough groups and every standard error at or below target."""
    return target_stderr is not None and groups >= MIN_GROUPS and bool(np.all(stderr <= target_stderr))


def report(progress: ProgressCallback | None, spent: int, budget: int, values: np.ndarray, stderr: np.ndarray) -> None:
    if progress is not None:
        progress(Progress(spent, budget, values, stderr))


def all_coalitions(n: int) -> np.ndarray:
    """All 2**n coalitions; row r contains player i iff bit i of r is set."""
    rows = np.arange(2**n)
    return ((rows[:, None] >> np.arange(n)) & 1).astype(bool)


def shapley_from_table(table: np.ndarray, n: int) -> np.ndarray:
    """Exact Shapley values (n, k) from values (2**n, k) indexed as in `all_coalitions`.

    phi_i = sum over S without i of |S|!(n-|S|-1)!/n! * (v(S+i) - v(S)), one vectorised
    sum per player.
    """
    rows = np.arange(2**n)
    sizes = all_coalitions(n).sum(axis=1)
    weights = np.array([1.0 / (n * comb(n - 1, s)) for s in range(n)])
    values = np.empty((n, table.shape[1]))
    for i in range(n):
        without = rows[(rows >> i) & 1 == 0]
        values[i] = weights[sizes[without]] @ (table[without | (1 << i)] - table[without])
    return values


def average_over_contexts(
    game: MemoisedGame,
    budget: int,
    cost: int,
    rng: np.random.Generator,
    attribute_in: Callable[[Context], np.ndarray],
    target_stderr: float | None,
    progress: ProgressCallback | None,
    start: int,
) -> tuple[np.ndarray, np.ndarray, int]:
    """Average a deterministic per-context attribution over the game's outer contexts.

    Used by estimators that are exact given a context (exact, leave-one-out). With
    `budget // cost` contexts affordable, enumerate the context support when it is that
    small (probability-weighted, stderr 0); otherwise draw that many contexts and report
    the standard error across them (inf for a single draw, which says nothing about the
    spread). Returns values, stderr and the number of contexts used.
    """
    count = max(1, budget // cost)
    support = game.context_support(limit=count)
    enumerated = support is not None
    plan: Iterable[tuple[Context, float]] = (
        support if support is not None else ((game.sample_context(rng), 1.0) for _ in range(count))
    )
    results: list[np.ndarray] = []
    weights: list[float] = []
    moments = RunningMoments(game.n_players)
    for context, weight in plan:
        results.append(attribute_in(context))
        if support is not None:
            weights.append(weight)
            values = np.tensordot(np.asarray(weights) / sum(weights), stack_padded(results), axes=1)
            stderr = np.zeros_like(values) if len(results) == len(support) else np.full_like(values, np.inf)
        else:
            moments.add(results[-1])
            values, stderr = moments.mean.copy(), moments.stderr()  # a snapshot: later samples update the moments in place
        report(progress, game.evaluations - start, budget, values, stderr)
        if not enumerated and done(stderr, target_stderr, len(results)):
            break
    return values, stderr, len(results)
