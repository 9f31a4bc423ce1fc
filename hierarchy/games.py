"""Cooperative games as the estimators see them.

A game maps coalitions (boolean rows, one column per player) to values. Values are
2-D: one column per output, so the answer-distribution value function (one
indicator per distinct answer, discovered while sampling) fits the same estimators
as a scalar log-probability. Column counts may grow between calls; earlier rows are
implicitly zero in the new columns, which is exact for indicators (see `pad_columns`).

Some games are *stochastic in a context*: in Owen (nested) sampling the players of a
level are the children of one expanded unit, and the units outside it are present or
absent according to a randomly drawn outer context. Estimators draw one context per
sample group (e.g. per permutation), so marginal contributions within a group are
taken under the same context, exactly as nested permutations do.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Protocol, Sequence

import numpy as np

Context = Hashable | None
"""An opaque, hashable description of the outer context; None for plain games."""


class Game(Protocol):
    """What an estimator needs from a game."""

    n_players: int

    def evaluate(self, coalitions: np.ndarray, contexts: Sequence[Context] | None = None) -> np.ndarray:
        """Values of boolean coalitions (m, n) under per-row contexts; returns (m, k)."""

    def sample_context(self, rng: np.random.Generator) -> Context:
        """One outer context drawn from its Shapley (Owen) distribution; None if there is none."""

    def context_support(self, limit: int) -> list[tuple[Context, float]] | None:
        """All contexts with their probabilities if there are at most `limit`, else None."""


def as_2d(values: np.ndarray, rows: int) -> np.ndarray:
    """Validate a value function's output and shape it (rows, k)."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.shape[0] != rows:
        raise ValueError(f"value function returned shape {np.shape(values)} for {rows} coalitions; expected ({rows},) or ({rows}, k)")
    if not np.all(np.isfinite(array)):
        raise ValueError("value function returned a non-finite value (NaN or inf)")
    return array


def pad_to(block: np.ndarray, width: int) -> np.ndarray:
    """Zero-fill the last axis to `width`: columns discovered later are zero for earlier rows."""
    missing = width - block.shape[-1]
    return np.pad(block, [(0, 0)] * (block.ndim - 1) + [(0, missing)]) if missing > 0 else block


def pad_columns(blocks: Sequence[np.ndarray]) -> np.ndarray:
    """Stack 2-D blocks whose column counts grew over time, zero-filling the missing columns."""
    width = max((block.shape[1] for block in blocks), default=1)
    return np.vstack([pad_to(block, width) for block in blocks]) if blocks else np.zeros((0, width))


@dataclass
class FunctionGame:
    """A plain (context-free) game around `value_fn(bool[m, n]) -> float[m] | float[m, k]`."""

    value_fn: Callable[[np.ndarray], np.ndarray]
    n_players: int

    def evaluate(self, coalitions: np.ndarray, contexts: Sequence[Context] | None = None) -> np.ndarray:
        coalitions = np.asarray(coalitions, dtype=bool)
        return as_2d(self.value_fn(coalitions), coalitions.shape[0])

    def sample_context(self, rng: np.random.Generator) -> Context:
        return None

    def context_support(self, limit: int) -> list[tuple[Context, float]] | None:
        return [(None, 1.0)]


class MemoisedGame:
    """Evaluates each distinct (context, coalition) once per request and counts evaluations.

    Estimators revisit the empty and full coalitions and, with antithetic or paired
    sampling, many others; model evaluations are the expensive part, so repeats are free.
    """

    def __init__(self, game: Game, on_evaluate: Callable[[int], None] | None = None) -> None:
        self.game = game
        self.n_players = game.n_players
        self.evaluations = 0
        self._cache: dict[tuple[Context, bytes], np.ndarray] = {}
        self._on_evaluate = on_evaluate

    def evaluate(self, coalitions: np.ndarray, contexts: Sequence[Context] | None = None) -> np.ndarray:
        coalitions = np.asarray(coalitions, dtype=bool)
        if coalitions.ndim != 2 or coalitions.shape[1] != self.n_players:
            raise ValueError(f"coalitions must have shape (m, {self.n_players}), got {coalitions.shape}")
        rows = coalitions.shape[0]
        contexts = list(contexts) if contexts is not None else [None] * rows
        keys = [(context, np.packbits(row).tobytes()) for context, row in zip(contexts, coalitions)]
        missing: dict[tuple[Context, bytes], int] = {}
        for index, key in enumerate(keys):
            if key not in self._cache and key not in missing:
                missing[key] = index
        if missing:
            indices = list(missing.values())
            fresh = self.game.evaluate(coalitions[indices], [contexts[i] for i in indices])
            for key, value in zip(missing, fresh):
                self._cache[key] = value
            self.evaluations += len(indices)
            if self._on_evaluate is not None:
                self._on_evaluate(len(indices))
        return pad_columns([self._cache[key][None, :] for key in keys]) if keys else np.zeros((0, 1))

    def sample_context(self, rng: np.random.Generator) -> Context:
        return self.game.sample_context(rng)

    def context_support(self, limit: int) -> list[tuple[Context, float]] | None:
        return self.game.context_support(limit)
