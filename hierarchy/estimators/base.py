"""The estimator contract and registry: one estimator per file, one shared signature.

Every estimator receives a memoised game, a budget of distinct coalition evaluations,
a random generator, an optional target standard error (stop early once every
player's standard error is below it) and an optional progress callback. It returns
values and standard errors of shape (n, k); `estimate()` squeezes k=1 away for
scalar games.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Protocol, cast

import numpy as np

from longshap.hierarchy.games import FunctionGame, Game, MemoisedGame
from longshap.hierarchy.registry import Registry


@dataclass
class Estimate:
    """Attribution values with their standard errors and cost."""

    values: np.ndarray
    stderr: np.ndarray
    evaluations: int
    method: str
    samples: int = 0
    """Independent sample groups used (permutations, pairs, subsets, contexts)."""
    extras: dict = field(default_factory=dict)

    def squeezed(self) -> "Estimate":
        """Drop the output axis of scalar games so values have shape (n,)."""
        if self.values.ndim == 2 and self.values.shape[1] == 1:
            return Estimate(self.values[:, 0], self.stderr[:, 0], self.evaluations, self.method, self.samples, self.extras)
        return self


@dataclass
class Progress:
    """A snapshot sent to progress callbacks while an estimator samples."""

    evaluations: int
    budget: int
    values: np.ndarray
    stderr: np.ndarray


ProgressCallback = Callable[[Progress], None]


class Estimator(Protocol):
    name: str

    def default_budget(self, n_players: int) -> int:
        """The budget used when the caller gives none: each estimator knows what it needs."""

    def minimum_budget(self, n_players: int) -> int:
        """The fewest evaluations from which it never spends more than its budget."""

    def attribute(
        self,
        game: MemoisedGame,
        budget: int,
        rng: np.random.Generator,
        target_stderr: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Estimate: ...


ESTIMATORS: Registry[Callable[[], Estimator]] = Registry("method")
register = ESTIMATORS.register


def get_estimator(name: str) -> Estimator:
    return ESTIMATORS.lookup(name)()


def sampling_budget(n_players: int) -> int:
    """The sampling estimators' default: usable estimates without blowing up cost on long inputs."""
    return max(64, 10 * (n_players + 1))


class Sampler:
    """Base of the sampling estimators: they share `sampling_budget` as their default budget."""

    name: ClassVar[str]  # set by @register

    def default_budget(self, n_players: int) -> int:
        return sampling_budget(n_players)

    def minimum_budget(self, n_players: int) -> int:
        return 1


class WithinBudget:
    """An estimator that never spends more than its budget, whatever the budget.

    Below the wrapped estimator's minimum the budget goes to permutation sampling,
    which spends any budget without exceeding it (players it cannot reach stay
    unknown: stderr inf), and the result's `method` says so; a budget of 0 evaluates
    nothing and knows nothing.
    """

    def __init__(self, estimator: Estimator) -> None:
        self.estimator = estimator
        self.name = estimator.name

    def default_budget(self, n_players: int) -> int:
        return self.estimator.default_budget(n_players)

    def minimum_budget(self, n_players: int) -> int:
        return 0

    def attribute(
        self,
        game: MemoisedGame,
        budget: int,
        rng: np.random.Generator,
        target_stderr: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> Estimate:
        n = game.n_players
        if budget < 1:
            return Estimate(np.zeros((n, 1)), np.full((n, 1), np.inf), 0, self.name, extras={"unmeasured": True})
        estimator = self.estimator if budget >= self.estimator.minimum_budget(n) else get_estimator("permutation")
        return estimator.attribute(game, budget, rng, target_stderr, progress)


def default_budget(method: str, n_players: int) -> int:
    """The named estimator's own default budget for `n_players` players."""
    return get_estimator(method).default_budget(n_players)


def estimate(
    value_fn: Callable[[np.ndarray], np.ndarray] | Game,
    n: int,
    method: str = "permutation",
    budget: int | None = None,
    seed: int = 0,
    target_stderr: float | None = None,
    progress: ProgressCallback | None = None,
) -> Estimate:
    """Attribute a game over `n` players with the named estimator.

    `value_fn` maps a boolean array (m, n), one coalition per row, to values (m,) or
    (m, k); it may also be a `Game`. Budget counts distinct coalition evaluations.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if budget is not None and (not isinstance(budget, (int, np.integer)) or budget < 1):
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    if target_stderr is not None and not (np.isfinite(target_stderr) and target_stderr > 0):
        raise ValueError(f"target_stderr must be a positive finite number, got {target_stderr!r}")
    estimator = get_estimator(method)
    game: Game
    if hasattr(value_fn, "evaluate"):
        game = cast(Game, value_fn)
    else:
        game = FunctionGame(cast(Callable[[np.ndarray], np.ndarray], value_fn), int(n))
    if game.n_players != n:
        raise ValueError(f"game has {game.n_players} players but n={n}")
    memo = game if isinstance(game, MemoisedGame) else MemoisedGame(game)
    budget = int(budget) if budget is not None else default_budget(method, int(n))
    result = WithinBudget(estimator).attribute(memo, budget, np.random.default_rng(seed), target_stderr, progress)
    result.evaluations = memo.evaluations
    return result.squeezed()
