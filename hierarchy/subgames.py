"""Games over the feature tree: one per expanded unit, players = its children.

A coalition of the whole request is the set of absent units. `RequestGame` turns
such sets into values through a renderer and a value function, evaluating each
distinct set once per request (levels revisit the full and empty prompts and many
contexts). `UnitGame` is what an estimator sees for the children of one expanded
unit. In Owen mode the rest of the tree follows a nested permutation: at every
ancestor level the ancestor's siblings that come after it in a random order are
absent, as in TextGenSHAP's nested sampling, so the levels form one coherent game
(children's values add up to their parent's). In local mode everything outside the
expanded unit stays present, which is cheaper to reason about but not nested.
"""
from __future__ import annotations

import itertools
from math import comb, prod
from typing import Callable, Sequence, cast

import numpy as np

from longshap.hierarchy.errors import Cancelled
from longshap.hierarchy.games import Context, as_2d, pad_columns
from longshap.hierarchy.segmentation import ROOT, FeatureTree

Absent = frozenset[str]
MODES = ("owen", "local")
CHUNK_CHARACTERS = 4_000_000
"""Prompt characters rendered and valued per value-function call at most: one call's prompts
(and their token lists) stay bounded in memory however many coalitions an estimator asks for."""
POLL_EVERY = 64
"""Prompts rendered between two looks at the stop flag."""


class RequestGame:
    """Values of absent-unit sets for one request, memoised."""

    def __init__(
        self,
        render: Callable[[Absent], str],
        value_fn: Callable[[Sequence[str]], np.ndarray],
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.render = render
        self.value_fn = value_fn
        self.should_stop = should_stop
        self.evaluations = 0
        self._cache: dict[Absent, np.ndarray] = {}

    def values(self, absent_sets: Sequence[Absent]) -> np.ndarray:
        """Values of each absent set; new ones rendered lazily and valued in chunks of CHUNK_CHARACTERS."""
        missing = list(dict.fromkeys(a for a in absent_sets if a not in self._cache))
        chunk: list[Absent] = []
        prompts: list[str] = []
        size = 0
        for index, absent in enumerate(missing):
            if index % POLL_EVERY == 0:
                self._check_stop()
            prompts.append(self.render(absent))
            chunk.append(absent)
            size += len(prompts[-1])
            if size >= CHUNK_CHARACTERS or index == len(missing) - 1:
                self._check_stop()
                self._cache.update(zip(chunk, as_2d(self.value_fn(prompts), len(prompts))))
                self.evaluations += len(prompts)
                chunk, prompts, size = [], [], 0
        return pad_columns([self._cache[a][None, :] for a in absent_sets])

    def remember(self, absent: Absent, values: np.ndarray) -> None:
        """Take a value computed outside the game (kv_mode blend's exact checks) as this set's value."""
        self._cache[absent] = np.asarray(values, dtype=float)

    def _check_stop(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("explanation cancelled")


def _preceding_distribution(others: Sequence[str]) -> list[tuple[frozenset[str], float]]:
    """Every set of siblings that can precede a unit in a uniform random order, with its probability."""
    s = len(others) + 1
    return [
        (frozenset(subset), 1.0 / (s * comb(s - 1, size)))
        for size in range(s)
        for subset in itertools.combinations(others, size)
    ]


class UnitGame:
    """The game among the children of one expanded unit, in Owen or local mode."""

    def __init__(self, request: RequestGame, tree: FeatureTree, parent: str, players: Sequence[str], mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.request = request
        self.players = list(players)
        self.n_players = len(self.players)
        # For each ancestor of the parent: (the ancestor, its siblings other than itself).
        ancestors = tree.ancestors(parent) if parent != ROOT and mode == "owen" else []
        self._outer = [(a, [s for s in tree.siblings(a) if s != a]) for a in ancestors]

    def evaluate(self, coalitions: np.ndarray, contexts: Sequence[Context] | None = None) -> np.ndarray:
        contexts = contexts if contexts is not None else [None] * len(coalitions)
        absent_sets = [
            # This game's contexts are the frozensets of absent outer units it samples itself.
            frozenset(p for p, present in zip(self.players, row) if not present) | cast(frozenset[str], context or frozenset())
            for row, context in zip(coalitions, contexts)
        ]
        return self.request.values(absent_sets)

    def sample_context(self, rng: np.random.Generator) -> Context:
        """Absent outer units under one nested random order (None when there is no outer level)."""
        if not self._outer:
            return None
        absent: set[str] = set()
        for _, others in self._outer:
            order = rng.permutation(len(others) + 1)  # position of the ancestor is index len(others)
            position = int(np.flatnonzero(order == len(others))[0])
            absent.update(others[i] for i in order[position + 1 :])
        return frozenset(absent)

    def context_support(self, limit: int) -> list[tuple[Context, float]] | None:
        """All outer contexts with their Owen probabilities, if there are at most `limit`."""
        if not self._outer:
            return [(None, 1.0)]
        if prod(2 ** len(others) for _, others in self._outer) > limit:
            return None
        support: list[tuple[Context, float]] = []
        for choice in itertools.product(*(_preceding_distribution(others) for _, others in self._outer)):
            absent = frozenset().union(*(set(others) - present for (_, others), (present, _) in zip(self._outer, choice)))
            support.append((absent, prod(weight for _, weight in choice)))
        return support
