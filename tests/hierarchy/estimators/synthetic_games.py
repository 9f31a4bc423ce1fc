"""Synthetic games with known values, and brute-force references independent of exact.py.

The interaction game with closed-form values is the benchmarks' own (`bench.synthetic`), re-exported here.

The references enumerate permutations (Shapley) or subsets (Banzhaf) one coalition at a
time, so they share no code or vectorisation tricks with the estimators under test.
"""
from __future__ import annotations

from itertools import combinations, permutations
from math import factorial
from typing import Callable, Sequence

import numpy as np

from bench.synthetic import Interaction

ValueFn = Callable[[np.ndarray], np.ndarray]


def _value_of(value_fn: ValueFn, n: int, members: Sequence[int]) -> np.ndarray:
    row = np.zeros((1, n), dtype=bool)
    row[0, list(members)] = True
    return np.atleast_1d(np.asarray(value_fn(row), dtype=float)[0])


def reference_shapley(value_fn: ValueFn, n: int) -> np.ndarray:
    """Average marginal contribution over all n! orderings, shape (n, k)."""
    total = None
    for order in permutations(range(n)):
        previous = _value_of(value_fn, n, [])
        contribution = [None] * n
        for position, player in enumerate(order):
            current = _value_of(value_fn, n, order[: position + 1])
            contribution[player] = current - previous
            previous = current
        total = np.array(contribution) if total is None else total + np.array(contribution)
    return total / factorial(n)


def reference_banzhaf(value_fn: ValueFn, n: int) -> np.ndarray:
    """Mean marginal contribution over all subsets of the other players, shape (n, k)."""
    rows = []
    for player in range(n):
        others = [j for j in range(n) if j != player]
        contributions = [
            _value_of(value_fn, n, [*subset, player]) - _value_of(value_fn, n, subset)
            for size in range(n)
            for subset in combinations(others, size)
        ]
        rows.append(np.mean(contributions, axis=0))
    return np.array(rows)


def additive(weights: np.ndarray) -> ValueFn:
    """v(S) = sum of weights in S; phi_i = w_i."""
    return lambda coalitions: coalitions @ weights


def voting(weights: Sequence[float], quota: float) -> ValueFn:
    """Weighted majority game: 1 if the coalition's weight reaches the quota."""
    weights = np.asarray(weights, dtype=float)
    return lambda coalitions: (coalitions @ weights >= quota).astype(float)


def two_columns(first: ValueFn, second: ValueFn) -> ValueFn:
    return lambda coalitions: np.stack([first(coalitions), second(coalitions)], axis=1)


class Counting:
    """Wraps a value function and records every coalition it is asked for."""

    def __init__(self, value_fn: ValueFn) -> None:
        self.value_fn = value_fn
        self.seen: list[bytes] = []

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        self.seen.extend(np.packbits(row).tobytes() for row in coalitions)
        return self.value_fn(coalitions)


class GrowingAnswers:
    """One indicator column per distinct answer, columns added in order of discovery.

    The answer is the coalition's total (integer) weight, so a batch sees only some of
    the answers and k grows across calls, as with sampled LLM answers.
    """

    def __init__(self, weights: Sequence[int]) -> None:
        self.weights = np.asarray(weights, dtype=int)
        self.columns: dict[int, int] = {}
        self.widths: list[int] = []
        """Column count returned by each call."""

    def answer(self, coalitions: np.ndarray) -> np.ndarray:
        return coalitions @ self.weights

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        answers = self.answer(coalitions)
        for answer in answers:
            self.columns.setdefault(int(answer), len(self.columns))
        out = np.zeros((len(coalitions), len(self.columns)))
        out[np.arange(len(coalitions)), [self.columns[int(a)] for a in answers]] = 1.0
        self.widths.append(len(self.columns))
        return out

    def frozen(self) -> ValueFn:
        """The same game with every column known from the start (in this run's discovery order)."""
        columns = dict(self.columns)

        def value_fn(coalitions: np.ndarray) -> np.ndarray:
            out = np.zeros((len(coalitions), len(columns)))
            out[np.arange(len(coalitions)), [columns[int(a)] for a in self.answer(coalitions)]] = 1.0
            return out

        return value_fn


class ContextGame:
    """A game stochastic in an outer context: context c is drawn with probability p_c.

    Each context has its own interaction game plus its own constant offset (invisible
    to the values, but wrong if an estimator mixes v(empty) across contexts), so the
    target is the probability-weighted average of the per-context values.
    """

    def __init__(self, n: int, probabilities: Sequence[float] = (0.5, 0.3, 0.2), seed: int = 0, cubic: float = 0.0) -> None:
        self.n_players = n
        self.probabilities = np.asarray(probabilities, dtype=float)
        self.games = [Interaction(n, seed + 100 * c, cubic) for c in range(len(probabilities))]

    def evaluate(self, coalitions: np.ndarray, contexts=None) -> np.ndarray:
        assert contexts is not None and len(contexts) == len(coalitions)
        contexts = np.asarray(contexts)
        out = np.zeros((len(coalitions), 1))
        for c, game in enumerate(self.games):
            out[contexts == c, 0] = game(coalitions[contexts == c]) + 5.0 * c
        return out

    def sample_context(self, rng: np.random.Generator) -> int:
        return int(rng.choice(len(self.probabilities), p=self.probabilities))

    def context_support(self, limit: int):
        if limit < len(self.probabilities):
            return None
        return [(c, float(p)) for c, p in enumerate(self.probabilities)]

    def expected(self, value: str) -> np.ndarray:
        """Probability-weighted average of the per-context closed-form `value` ("shapley", "banzhaf", "loo")."""
        return sum(p * getattr(game, value)() for p, game in zip(self.probabilities, self.games))
