"""Leverage SHAP (Musco & Witter, ICLR 2025) over distinct paired coalitions, whole strata enumerated."""
from __future__ import annotations

import itertools
from math import comb

import numpy as np

from longshap.hierarchy.estimators._stats import (
    check_inputs,
    constrained_least_squares,
    done,
    growing_batch,
    report,
    student_scale,
)
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler, register
from longshap.hierarchy.estimators.kernel import Kernel
from longshap.hierarchy.games import MemoisedGame, pad_columns

ENUMERABLE = 50_000
"""Strata with at most this many pairs are sampled from an explicit list; larger ones by rejection."""


def _stratum_pairs(n: int, size: int) -> int:
    """Distinct pairs {S, complement} with min(|S|, n - |S|) = size."""
    return comb(n, size) // 2 if 2 * size == n else comb(n, size)


def _plan(n: int, pairs: int) -> tuple[list[int], dict[int, int]]:
    """Strata to enumerate whole, and how many pairs to draw from each of the others.

    Leverage scores of the Shapley regression are equal for every coalition size, so
    each size (a stratum pair s, n - s counts twice) gets an equal share of the pairs.
    A stratum whose share would reach its number of pairs is enumerated instead (as
    shapiq's KernelSHAP does), and the shares are recomputed over the rest; what is left
    is split by largest remainder, so the budget is spent to the last pair.
    """
    sizes = list(range(1, n // 2 + 1))
    share = {s: 1.0 if 2 * s == n else 2.0 for s in sizes}
    enumerated: list[int] = []
    remaining = pairs
    changed = True
    while changed:
        changed = False
        sampled = [s for s in sizes if s not in enumerated]
        total = sum(share[s] for s in sampled)
        for s in sampled:
            if remaining * share[s] / total >= _stratum_pairs(n, s):
                enumerated.append(s)
                remaining -= _stratum_pairs(n, s)
                changed = True
                break
    sampled = [s for s in sizes if s not in enumerated]
    if not sampled:
        return enumerated, {}
    total = sum(share[s] for s in sampled)
    exact = {s: remaining * share[s] / total for s in sampled}
    counts = {s: int(exact[s]) for s in sampled}
    for s in sorted(sampled, key=lambda s: counts[s] - exact[s])[: remaining - sum(counts.values())]:
        counts[s] += 1
    return enumerated, counts


class _StratumSampler:
    """Distinct coalitions of one stratum in random order, one per pair, drawn as needed.

    For size n/2 a pair's two halves are the same size, so the half containing player 0
    stands for the pair. Small strata are listed once and shuffled (exhausting one is
    enumerating it); large ones are drawn by rejection. Lazy, so a huge budget costs no
    up-front work and cancellation is checked between batches.
    """

    def __init__(self, n: int, size: int, rng: np.random.Generator) -> None:
        self.n, self.size, self.rng = n, size, rng
        self.half = 2 * size == n
        self.total = _stratum_pairs(n, size)
        self.listed: list[tuple[int, ...]] | None = None
        self.seen: set[bytes] = set()
        self.drawn = 0

    def draw(self, count: int) -> np.ndarray:
        members = np.zeros((count, self.n), dtype=bool)
        if self.total <= ENUMERABLE:
            if self.listed is None:
                if self.half:
                    listed = [(0, *rest) for rest in itertools.combinations(range(1, self.n), self.size - 1)]
                else:
                    listed = list(itertools.combinations(range(self.n), self.size))
                self.listed = [listed[i] for i in self.rng.permutation(len(listed))]
            for row, players in enumerate(self.listed[self.drawn : self.drawn + count]):
                members[row, list(players)] = True
        else:
            row = 0
            while row < count:
                members[row, self.rng.choice(self.n, size=self.size, replace=False)] = True
                if self.half and not members[row, 0]:
                    members[row] = ~members[row]
                key = np.packbits(members[row]).tobytes()
                if key in self.seen:
                    members[row] = False
                    continue
                self.seen.add(key)
                row += 1
        self.drawn += count
        return members


def _fit(
    n: int, members: np.ndarray, strata: np.ndarray, complete: set[int], targets: np.ndarray, complements: np.ndarray, total: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified Shapley-kernel regression and its delta-method standard error.

    Each stratum s carries the Shapley kernel's total weight of its sizes, shared
    equally by its rows, so the fit is the exact KernelSHAP objective with every sampled
    stratum replaced by the mean of its sample. Linearising the constrained solution,
    phi_hat - phi ~ sum_s W_s mean_{j in s} psi_j with psi_j = M (b_j - A_j phi); strata
    enumerated whole contribute no variance, sampled ones W_s^2 (1 - c_s/N_s) var(psi)/c_s
    (finite population correction: drawn without replacement), rescaled by pairs / dof
    for the fitted parameters (HC1) and widened to Student-t. A sampled stratum with
    fewer than two pairs, or too few pairs overall for the n - 1 free parameters, leaves
    the error undetermined: inf.
    """
    inside = members.astype(np.float64)
    outside = 1.0 - inside
    present = np.unique(strata)
    count = {s: int(np.sum(strata == s)) for s in present}
    kernel = {s: (n - 1) / (s * (n - s)) * (1 if 2 * s == n else 2) for s in present}
    weights = np.array([kernel[s] / count[s] for s in strata])[:, None]
    gram = (inside.T @ (weights * inside) + outside.T @ (weights * outside)) / 2
    moment = (inside.T @ (weights * targets) + outside.T @ (weights * complements)) / 2
    values, m, _ = constrained_least_squares(gram, moment, total)
    influence = (
        (inside @ m)[:, :, None] * (targets - inside @ values)[:, None, :]
        + (outside @ m)[:, :, None] * (complements - outside @ values)[:, None, :]
    ) / 2
    sampled = [s for s in range(1, n // 2 + 1) if s not in complete]
    pairs = sum(count.get(s, 0) for s in sampled)
    dof = pairs - len(sampled) - (n - 1)
    if not sampled:
        return values, np.zeros_like(values)
    if dof < 1 or any(count.get(s, 0) < 2 for s in sampled):
        return values, np.full_like(values, np.inf)
    variance = np.zeros_like(values)
    for s in sampled:
        rows = influence[strata == s]
        kept = 1 - count[s] / _stratum_pairs(n, s)
        variance += kernel[s] ** 2 * kept * rows.var(axis=0, ddof=1) / count[s]
    return values, np.sqrt(variance * pairs / dof) * student_scale(dof)


@register("leverage")
class Leverage(Sampler):
    """Shapley values by paired, stratified leverage-score sampling and exact kernel regression.

    Musco & Witter (ICLR 2025) show the Shapley regression's leverage scores are equal
    across coalition sizes, so sampling sizes uniformly (rather than by kernel weight,
    as KernelSHAP does) gives the regression's guarantees with O(n log n) samples. Here
    each sample is a pair (S, complement) (paired sampling, as in Covert & Lee), pairs
    are distinct (drawn without replacement within a size), and a size whose share of
    the budget would cover all its pairs is enumerated whole, so small strata (the
    leave-one-out and leave-one-in coalitions first) are exact and the remaining budget
    goes to the large middle strata. The fit imposes sum(phi) = v(N) - v(empty).

    Games with outer contexts (Owen subgames) draw a context per sample group, which
    strata enumeration cannot serve: those go to `kernel` (the result's `method` says so).

    Budget: v(empty) and v(N), then pairs of two evaluations each: every evaluation is
    spent but the last one of an odd budget; at least one pair. Batches (enumerated
    strata first, then the sampled pairs in random order, growing to a quarter of the
    pairs so far) give progress reports and stop early at `target_stderr`.
    """

    def attribute(
        self,
        game: MemoisedGame,
        budget: int,
        rng: np.random.Generator,
        target_stderr: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Estimate:
        support = game.context_support(limit=1)
        if support is None or len(support) != 1:
            return Kernel().attribute(game, budget, rng, target_stderr, progress)
        context = support[0][0]
        start = check_inputs(game, budget)
        n = game.n_players
        ends = game.evaluate(np.array([[False] * n, [True] * n]), [context, context])
        empty, total = ends[0], ends[1] - ends[0]
        if n == 1:
            values = total[None, :]
            return Estimate(values, np.zeros_like(values), game.evaluations - start, self.name)
        enumerated, counts = _plan(n, max(1, (budget - 2) // 2))
        samplers = {s: _StratumSampler(n, s, rng) for s in [*enumerated, *counts]}
        # Enumerated strata first, then the sampled pairs with strata interleaved at random;
        # any prefix is a random sample of each stratum, so every batch gives a valid fit.
        first = rng.permutation(np.repeat(enumerated, [_stratum_pairs(n, s) for s in enumerated]).astype(int))
        later = rng.permutation(np.repeat(list(counts), list(counts.values())).astype(int))
        queue = np.concatenate([first, later])
        member_blocks, strata_blocks, inside_blocks, outside_blocks = [], [], [], []
        done_pairs = 0
        while done_pairs < len(queue):
            strata = queue[done_pairs : done_pairs + growing_batch(n + 1, done_pairs)]
            members = np.zeros((len(strata), n), dtype=bool)
            for s in np.unique(strata):
                members[strata == s] = samplers[int(s)].draw(int(np.sum(strata == s)))
            done_pairs += len(strata)
            batch = game.evaluate(np.vstack([members, ~members]), [context] * (2 * len(members)))
            member_blocks.append(members)
            strata_blocks.append(strata)
            inside_blocks.append(batch[: len(members)])
            outside_blocks.append(batch[len(members) :])
            inside, outside = pad_columns(inside_blocks), pad_columns(outside_blocks)
            width = inside.shape[1]
            base = np.pad(empty, (0, width - len(empty)))
            complete = {s for s, sampler in samplers.items() if sampler.drawn == sampler.total}
            values, stderr = _fit(
                n, np.vstack(member_blocks), np.concatenate(strata_blocks), complete,
                inside - base, outside - base, np.pad(total, (0, width - len(total))),
            )
            report(progress, game.evaluations - start, budget, values, stderr)
            if done(stderr, target_stderr, done_pairs):
                break
        return Estimate(
            values, stderr, game.evaluations - start, self.name,
            samples=sum(map(len, strata_blocks)), extras={"enumerated_sizes": sorted(enumerated)},
        )
