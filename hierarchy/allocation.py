"""Adaptive allocation: a level's games run in rounds until its decisions are settled.

A level only has to decide two things: which units pass the expansion threshold and
the order of its top units. Each game's budget is spent in up to `ROUNDS` rounds, the
first taking half of it (`FIRST_SHARE`) and the others equal parts of the rest; every
round is an independent run of the estimator (its own draws from the game's random
stream, the memoised game shared, so repeated coalitions are free), and a game's
rounds are pooled. After each round the caller says which units are still unsettled
(`unsettled_units` is the rule the explainer uses); only games holding such a unit
get another round, so evaluations go where they can change the answer, and a level
whose decisions are settled stops early. A decision that the rest of the budget could
not settle, were its current estimate the truth, asks for no round either (futility
stopping): ranks 2 to 9 of a sentence's words, a few hundredths apart with errors ten
times that, would otherwise take a level's whole second half and still be open. Differences smaller than INDIFFERENCE of the
level's total effect count as ties (an indifference zone), so near-equal units do not
keep a level sampling to separate noise.

Pooling is a fixed-weight average of independent unbiased estimates (weights = the
rounds' sample groups, known before the values are), so its standard error is the
propagated one, sqrt(sum w_i^2 se_i^2) / sum w_i: it stays honest whenever each
round's is. Stopping on the data makes the final decisions conditional on that
stopping, as any sequential rule does; `confidence` bounds each unit's chance of a
decision that more sampling would flip.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from math import ceil
from statistics import NormalDist

import numpy as np
from longshap.hierarchy.estimators.base import Estimate, Estimator, Progress
from longshap.hierarchy.games import MemoisedGame, pad_to
from longshap.hierarchy.options import OPTIONS

ROUNDS = 2
"""A game's budget is spent in up to this many rounds: at best a settled level costs FIRST_SHARE of it."""
FIRST_SHARE = 0.5
"""The first round's share of a game's budget.

Rounds are independent estimator runs, and an estimator on a small budget is a worse
one: at a quarter of a 10(n + 1) budget `auto` can only afford permutations, whose
single pair leaves most players' standard errors infinite, so nothing could settle or
be expanded (10 NQ passages: the explanation stopped at the document level). Half
the budget buys a regression with a finite error for every player, and so does the
other half: more, smaller rounds would hand the later ones to the weaker estimator,
and one infinite error in a fixed-weight pool makes the pooled error infinite."""
MIN_ROUND_PER_PLAYER = 4
"""A budget is only split when each round still gets this many evaluations per player.

Below it a round is one permutation pair, whose standard error is infinite: two such
rounds settle nothing and expand nothing (20 NQ passages at 4(n + 1) per level
stopped at the documents), where the whole budget in one run does."""


def z_score(confidence: float) -> float:
    """Two-sided normal quantile for `confidence` (0.95 -> 1.96).

    Taken from the lower tail: 0.5 + confidence / 2 rounds to 1 for a confidence within
    float precision of 1, where the quantile does not exist."""
    return -NormalDist().inv_cdf((1 - confidence) / 2)


@dataclass
class Pooled:
    """Fixed-weight pool of independent round estimates of one game, columns growing as answers appear."""

    weighted_sum: np.ndarray | None = None
    weighted_var: np.ndarray | None = None
    weight: float = 0.0
    rounds: int = 0
    evaluations: int = 0
    methods: list[str] = field(default_factory=list)
    """The estimator of each round (auto names its choice)."""

    def add(self, estimate: Estimate, evaluations: int) -> None:
        values, stderr = np.atleast_2d(estimate.values.T).T, np.atleast_2d(estimate.stderr.T).T
        self.rounds += 1
        self.evaluations += evaluations
        self.methods.append(estimate.method)
        if self.weight > 0 and estimate.extras.get("unmeasured"):
            return  # a round with no budget measured nothing; its zeros are not samples
        w = float(max(estimate.samples, 1))
        width = max(values.shape[1], 0 if self.weighted_sum is None else self.weighted_sum.shape[1])
        previous_sum = np.zeros((values.shape[0], width)) if self.weighted_sum is None else pad_to(self.weighted_sum, width)
        previous_var = np.zeros((values.shape[0], width)) if self.weighted_var is None else pad_to(self.weighted_var, width)
        self.weighted_sum = previous_sum + w * pad_to(values, width)
        self.weighted_var = previous_var + w**2 * pad_to(stderr, width) ** 2
        self.weight += w

    @property
    def method(self) -> str:
        """The estimators that ran the rounds, each once, joined by '+'."""
        return "+".join(dict.fromkeys(self.methods))

    @property
    def values(self) -> np.ndarray:
        assert self.weighted_sum is not None, "no rounds pooled yet"
        return self.weighted_sum / self.weight

    @property
    def stderr(self) -> np.ndarray:
        assert self.weighted_var is not None, "no rounds pooled yet"
        return np.sqrt(self.weighted_var) / self.weight


INDIFFERENCE = 0.05
"""Differences below this share of the level's total effect are ties: no decision depends on them."""


def unsettled_units(
    scores: np.ndarray,
    stderr: np.ndarray,
    threshold: float | None,
    top_k: int | None,
    z: float,
    tolerance: float = 0.0,
    projected: np.ndarray | None = None,
) -> np.ndarray:
    """Units whose expansion decision or top-k rank the data cannot yet tell at `z` standard errors.

    `scores` are signed importances (larger = more important), `threshold` the absolute
    expansion threshold (None when nothing is expanded), `top_k` how many leading ranks
    must be ordered (None: all). A decision is settled when the score is at least z
    standard errors from the threshold; a rank when each neighbour among the top k + 1
    is z standard errors of their difference away. An infinite standard error never settles.

    `tolerance` is an indifference zone (in score units): a comparison whose whole
    z-interval lies within +-tolerance is settled as a tie, since either outcome is an
    equally good answer. Without it two units of (nearly) equal value, such as the many
    near-zero passages of a long context, would never settle and every level would spend
    its whole budget telling noise apart.

    `projected`, when given, is each unit's standard error once its game has spent the
    rest of its budget. An open comparison then counts only if that error would settle
    it, were the current difference the truth: one the remaining budget cannot settle
    (futile, in sequential-testing terms) asks for no more evaluations. An infinite
    error says nothing of what more sampling can do, so it always counts. The report
    of what is left open is made without `projected`.
    """
    scores, stderr = np.asarray(scores, dtype=float), np.asarray(stderr, dtype=float)
    final = None if projected is None else np.asarray(projected, dtype=float)

    def settles(difference: np.ndarray, spread: np.ndarray) -> np.ndarray:
        return (np.abs(difference) >= z * spread) | (np.abs(difference) + z * spread <= tolerance)

    def unsure(difference: np.ndarray, spread: np.ndarray, final_spread: np.ndarray | None) -> np.ndarray:
        open_now = ~settles(difference, spread)
        if final_spread is None:
            return open_now
        return open_now & (settles(difference, final_spread) | ~np.isfinite(spread))

    unsettled = np.zeros(len(scores), dtype=bool)
    if threshold is not None:
        unsettled |= unsure(scores - threshold, stderr, final)
    order = np.argsort(-scores, kind="stable")
    ranked = order[: len(order) if top_k is None else min(len(order), top_k + 1)]
    for upper, lower in pairwise(ranked):
        final_spread = None if final is None else np.hypot(final[upper], final[lower])
        if unsure(scores[upper] - scores[lower], np.hypot(stderr[upper], stderr[lower]), final_spread):
            unsettled[[upper, lower]] = True
    return unsettled


def expansion_could_change(scores: np.ndarray, stderr: np.ndarray, projected: np.ndarray, threshold: float) -> np.ndarray:
    """Units that TextGenSHAP's expansion rule (score - stderr >= threshold) would judge otherwise at the `projected` errors.

    The rule takes one standard error of margin, not z of them, so a unit well above the
    threshold but measured loosely (say 5.3 +- 7.0, as an Owen subgame of 3 sentences can
    be after one small round) is left unexpanded until its error shrinks, even when no z-interval
    can be settled: futility stopping must not keep those evaluations from it.
    """
    return (scores - stderr >= threshold) != (scores - projected >= threshold)


def run_in_rounds(
    estimator: Estimator,
    games: Sequence[MemoisedGame],
    budgets: Sequence[int],
    rngs: Sequence[np.random.Generator],
    unsettled: Callable[[list[Pooled]], Sequence[bool]],
    progress: Callable[[int, Progress], None] | None = None,
    rounds: int = ROUNDS,
) -> list[Pooled]:
    """Run every game's estimator round by round while `unsettled(pools)` flags it and its budget and rounds last.

    `unsettled` gets the pools of all games and returns, per game, whether any of its
    units still needs evaluations. `progress(game_index, snapshot)` follows each round.
    """
    pools = [Pooled() for _ in games]
    game_rounds = [rounds if budget * FIRST_SHARE >= MIN_ROUND_PER_PLAYER * game.n_players else 1 for game, budget in zip(games, budgets)]
    active = list(range(len(games)))
    while active:
        for index in active:
            game, pool = games[index], pools[index]
            share = _round_share(budgets[index], pool.rounds, game_rounds[index])
            before = game.evaluations
            estimate = estimator.attribute(game, max(0, min(share, budgets[index] - pool.evaluations)), rngs[index])
            pool.add(estimate, game.evaluations - before)
            if progress is not None:
                progress(index, Progress(pool.evaluations, budgets[index], pool.values, pool.stderr))
        flags = unsettled(pools)
        # A round count cap too: on a small game memoised repeats make rounds free, so budgets alone may never end.
        active = [i for i in active if flags[i] and pools[i].evaluations < budgets[i] and pools[i].rounds < game_rounds[i]]
    return pools


def _round_share(budget: int, done: int, rounds: int) -> int:
    """Evaluations for a game's next round: FIRST_SHARE of the budget first, then equal parts of the rest."""
    first = ceil(budget * FIRST_SHARE) if rounds > 1 else budget
    return max(1, first if done == 0 else ceil((budget - first) / (rounds - 1)))


@dataclass(frozen=True)
class Allocation:
    """A request's adaptive-allocation settings (validated)."""

    confidence: float = OPTIONS["confidence"].default
    total_budget: int | None = None
    """Model evaluations for all levels together; a level gets an even share of what is left."""

    def __post_init__(self) -> None:
        OPTIONS["confidence"].check(self.confidence)
        OPTIONS["total_budget"].resolve(self.total_budget)

    @property
    def z(self) -> float:
        return z_score(self.confidence)

    def level_budget(self, per_level: int | None, spent: int, levels_left: int) -> int | None:
        """This level's evaluations: an even share of the unspent total, never above the per-level budget."""
        if self.total_budget is None:
            return per_level
        share = (self.total_budget - spent) // levels_left
        return share if per_level is None else min(per_level, share)
