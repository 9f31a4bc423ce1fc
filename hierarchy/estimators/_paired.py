"""Leverage SHAP's sampling design, shared by the estimators that fit other models to it.

Distinct pairs (S, complement) stratified by min(|S|, n - |S|), an equal share of the
budget per coalition size, small strata enumerated whole (see `leverage._plan`). The
generator yields the data gathered so far after every batch, so each estimator can
re-fit, report progress and stop at its target standard error.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import itertools
from typing import Iterator

import numpy as np

from longshap.hierarchy.estimators._stats import growing_batch
from longshap.hierarchy.estimators.leverage import _plan, _stratum_pairs, _StratumSampler
from longshap.hierarchy.games import Context, MemoisedGame, pad_columns, pad_to


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


def stratum_size(n: int, size: int) -> int:
    """Number of pairs in a stratum (re-exported for the estimators built on this design)."""
    return _stratum_pairs(n, size)


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
    first = rng.permutation(np.repeat(enumerated, [_stratum_pairs(n, s) for s in enumerated]).astype(int))
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
