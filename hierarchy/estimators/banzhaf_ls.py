"""Banzhaf values as least-squares coefficients over uniform coalitions (Hammer & Holzman 1992)."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from longshap.hierarchy.estimators._stats import check_inputs, done, growing_batch, max_groups, report, student_scale
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, register, sampling_budget
from longshap.hierarchy.games import MemoisedGame, pad_columns


def _ordinary_least_squares(members: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slopes of v on (z - 1/2) with an intercept, and their heteroskedasticity-robust stderr.

    Under uniform coalitions E[(z - 1/2)(z - 1/2)'] = I/4, so the population slopes are
    4 E[(z_i - 1/2) v] = E[v | i in] - E[v | i out]: the Banzhaf values. The sample fit
    uses every coalition for every player and removes the part of each player's
    contrast explained by the others' presence, the variance that plain maximum sample
    reuse keeps. Errors: the sandwich (X'X)^-1 (sum x x' e^2) (X'X)^-1, rescaled by
    m / (m - p) and widened to Student-t with m - p degrees of freedom; inf while the
    m samples cannot pin down p = n + 1 coefficients with room to spare.
    """
    rows, n = members.shape
    design = np.hstack([np.ones((rows, 1)), members - 0.5])
    dof = rows - (n + 1)
    gram = design.T @ design
    if dof < 1 or np.linalg.matrix_rank(gram) <= n:
        coefficients = np.linalg.lstsq(design, outputs, rcond=None)[0]
        return coefficients[1:], np.full_like(coefficients[1:], np.inf)
    inverse = np.linalg.inv(gram)
    coefficients = inverse @ design.T @ outputs
    residuals = outputs - design @ coefficients
    leverage_rows = design @ inverse  # (m, p): row j of (X'X)^-1 x_j
    variance = np.einsum("mp,mk->pk", leverage_rows**2, residuals**2) * rows / dof
    return coefficients[1:], np.sqrt(variance[1:]) * student_scale(dof)


@register("banzhaf_ls")
class BanzhafLeastSquares:
    """Banzhaf values by regression on uniform random coalitions (maximum sample reuse plus regression).

    The same samples as `banzhaf` (every coalition a Bernoulli(1/2) subset with its own
    outer context, informing all players at once), fitted by least squares instead of
    differences of means, which cuts the error several-fold on games with strong
    players (their presence no longer adds noise to everyone else's contrast).

    Budget: one evaluation per sample at most (repeats are memoised); batches
    (2(n + 1) samples, growing to a quarter of the samples so far) are capped by the
    remaining budget, which is spent exactly; at most 4 * budget samples (binds only on
    games with few coalitions).
    """

    name: ClassVar[str]  # set by @register

    def default_budget(self, n_players: int) -> int:
        return sampling_budget(n_players)

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
            values, stderr = _ordinary_least_squares(np.vstack(member_blocks).astype(np.float64), pad_columns(output_blocks))
            report(progress, game.evaluations - start, budget, values, stderr)
            if done(stderr, target_stderr, samples):
                break
        return Estimate(values, stderr, game.evaluations - start, self.name, samples=samples)
