"""Leverage SHAP's sampling design, shared by `leverage` and the estimators that fit other models to it.

Distinct pairs (S, complement) stratified by min(|S|, n - |S|), an equal share of the
budget per coalition size, small strata enumerated whole (see `_plan`). The
generator yields the data gathered so far after every batch, so each estimator can
re-fit, report progress and stop at its target standard error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import itertools
from math import comb
from typing import Iterator

import numpy as np

from longshap.hierarchy.estimators._stats import check_inputs, done, growing_batch, report
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler
from longshap.hierarchy.estimators.kernel import Kernel
from longshap.hierarchy.games import Context, MemoisedGame, pad_columns, pad_to


ENUMERABLE = 50_000
"""Strata with at most this many pairs are sampled from an explicit list; larger ones by rejection."""


def stratum_size(n: int, size: int) -> int:
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
            if remaining * share[s] / total >= stratum_size(n, s):
                enumerated.append(s)
                remaining -= stratum_size(n, s)
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
        self.total = stratum_size(n, size)
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


def one_player(game: MemoisedGame, context: Context, start: int, name: str) -> Estimate:
    """A one-player game's exact value, v(N) - v(empty): nothing to sample or fit."""
    ends = game.evaluate(np.array([[False], [True]]), [context, context])
    values = ends[1:] - ends[:1]
    return Estimate(values, np.zeros_like(values), game.evaluations - start, name)


@dataclass
class PairedSample:
    """Everything sampled so far; values relative to v(empty), columns padded to one width."""

    n: int
    total: np.ndarray
    """v(N) - v(empty), shape (k,)."""
    members: np.ndarray
    """Sampled coalitions S, one per pair, (P, n) bool; for |S| = n/2 the half holding player 0."""
    strata: np.ndarray
    """min(|S|, n - |S|) of each pair, (P,)."""
    inside: np.ndarray
    """v(S) - v(empty), (P, k)."""
    outside: np.ndarray
    """v(complement) - v(empty), (P, k)."""
    complete: set[int] = field(default_factory=set)
    """Strata whose every pair has been evaluated (their sums are exact)."""
    enumerated: list[int] = field(default_factory=list)


    @property
    def sampled(self) -> list[int]:
        """Strata known only from a sample: every stratum not (yet) complete."""
        return [s for s in range(1, self.n // 2 + 1) if s not in self.complete]


def kernel_weight(n: int, size: int) -> float:
    """Shapley-kernel weight of a whole stratum of pairs (sizes s and n - s together)."""
    return (n - 1) / (size * (n - size)) * (1 if 2 * size == n else 2)


def paired_batches(game: MemoisedGame, budget: int, rng: np.random.Generator, context: Context) -> Iterator[PairedSample]:
    """Evaluate v(empty), v(N), then distinct pairs in growing batches; yield the data after each.

    Needs n >= 2. Budget: 2 + 2 * pairs evaluations, at least one pair, as `leverage`.
    """
    n = game.n_players
    ends = game.evaluate(np.array([[False] * n, [True] * n]), [context, context])
    empty, total = ends[0], ends[1] - ends[0]
    enumerated, counts = _plan(n, max(1, (budget - 2) // 2))
    samplers = {s: _StratumSampler(n, s, rng) for s in [*enumerated, *counts]}
    first = rng.permutation(np.repeat(enumerated, [stratum_size(n, s) for s in enumerated]).astype(int))
    later = rng.permutation(np.repeat(list(counts), list(counts.values())).astype(int))
    queue = np.concatenate([first, later])
    member_blocks: list[np.ndarray] = []
    strata_blocks: list[np.ndarray] = []
    inside_blocks: list[np.ndarray] = []
    outside_blocks: list[np.ndarray] = []
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
        base = pad_to(empty[None, :], width)[0]
        yield PairedSample(
            n=n,
            total=pad_to(total[None, :], width)[0],
            members=np.vstack(member_blocks),
            strata=np.concatenate(strata_blocks),
            inside=inside - base,
            outside=outside - base,
            complete={s for s, sampler in samplers.items() if sampler.drawn == sampler.total},
            enumerated=sorted(enumerated),
        )


def all_pairs_of(n: int, size: int) -> np.ndarray:
    """Every pair of a stratum as its representative coalition (the half with player 0 when |S| = n/2)."""
    if 2 * size == n:
        listed = [(0, *rest) for rest in itertools.combinations(range(1, n), size - 1)]
    else:
        listed = list(itertools.combinations(range(n), size))
    members = np.zeros((len(listed), n), dtype=bool)
    for row, players in enumerate(listed):
        members[row, list(players)] = True
    return members


class PairedDesign(Sampler):
    """Base of the estimators fitted to this design: they differ only in `fit` (and what they add to extras).

    Games with outer contexts (Owen subgames) draw a context per sample group, which
    strata enumeration cannot serve: those go to `kernel` (the result's `method` says
    so). A one-player game is exact. Otherwise the fit is redone after every batch
    when someone is told of it (progress reports, or a `target_stderr` to stop at);
    with neither only the last batch is fitted, which matters for fits that select
    terms or cross-fit (`odd`, `proxy`).
    """

    def minimum_budget(self, n_players: int) -> int:
        """Games with outer contexts go to kernel: its minimum, which is at least this design's first pair."""
        return Kernel().minimum_budget(n_players)

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
        if game.n_players == 1:
            return one_player(game, context, start, self.name)
        state = self.prepare(game.n_players, rng)
        watched = progress is not None or target_stderr is not None
        fitted: PairedSample | None = None
        for data in paired_batches(game, budget, rng, context):
            if not watched:
                continue
            values, stderr = self.fit(data, state)
            fitted = data
            report(progress, game.evaluations - start, budget, values, stderr)
            if done(stderr, target_stderr, len(data.strata)):
                break
        if fitted is not data:
            values, stderr = self.fit(data, state)
        return Estimate(
            values, stderr, game.evaluations - start, self.ran(state),
            samples=len(data.strata), extras={"enumerated_sizes": data.enumerated, **self.extras(data, state)},
        )

    def prepare(self, n: int, rng: np.random.Generator) -> object:
        """Anything the fit needs drawn before the pairs (e.g. reference pairs); None by default."""
        return None

    def fit(self, data: PairedSample, state: object) -> tuple[np.ndarray, np.ndarray]:
        """Values and standard errors (n, k) from the pairs so far."""
        raise NotImplementedError

    def extras(self, data: PairedSample, state: object) -> dict:
        """What the result reports besides the enumerated sizes."""
        return {}

    def ran(self, state: object) -> str:
        """The name the result reports as its method: this estimator's, unless it delegated the fit."""
        return self.name
