"""KernelSHAP with paired sampling and exact efficiency (Covert & Lee 2021, "Improving KernelSHAP")."""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.estimators._stats import (
    average_over_contexts,
    check_inputs,
    constrained_least_squares,
    done,
    growing_batch,
    max_groups,
    report,
    student_scale,
)
from longshap.hierarchy.estimators.base import Estimate, ProgressCallback, Sampler, register
from longshap.hierarchy.games import Context, MemoisedGame, pad_columns

GROUP_PAIRS = 4
"""Pairs sharing one outer context; each context also costs v(empty) and v(N)."""
GROUP_COST = 2 + 2 * GROUP_PAIRS


def _solve(
    members: np.ndarray, targets: np.ndarray, complement_targets: np.ndarray, totals: np.ndarray, clustered: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Constrained least squares and its delta-method standard error.

    members (P, n) are the sampled coalitions z, grouped GROUP_PAIRS per context;
    targets (P, k) are v(z) - v(empty) and complement_targets the same for the
    complements; totals (C, k) are v(N) - v(empty) per context. With A = mean z z',
    b = mean z (v(z) - v(empty)) and t the mean total, phi = M b + u t (see
    `constrained_least_squares`). Perturbing A, b and t gives
    d phi = M (d b - d A phi) + u d t, so each pair contributes the influence
    M (b_j - A_j phi) and each context u (t_c - t). When the contexts differ
    (`clustered`), pairs sharing a context are dependent and the influences are summed
    per context before taking their spread (cluster-robust).

    Honest at small samples: the fit has n - 1 free parameters, so with fewer pairs than
    n it interpolates and its residuals say nothing about the error (inf); above that
    each influence is divided by 1 - h_j, its pair's leverage (HC3, which corrects the
    residuals a small-sample fit shrinks towards its own points), and the spread is
    widened to a Student-t band on the pairs left over the n - 1 parameters.
    """
    pairs, n = members.shape
    inside = members.astype(np.float64)
    outside = 1.0 - inside
    gram = (inside.T @ inside + outside.T @ outside) / (2 * pairs)
    moment = (inside.T @ targets + outside.T @ complement_targets) / (2 * pairs)
    values, m, u = constrained_least_squares(gram, moment, totals.mean(axis=0))
    # M (b_j - A_j phi) = (M z_j (y_j - z_j'phi) + M zc_j (yc_j - zc_j'phi)) / 2, with M symmetric.
    influence = (
        (inside @ m)[:, :, None] * (targets - inside @ values)[:, None, :]
        + (outside @ m)[:, :, None] * (complement_targets - outside @ values)[:, None, :]
    ) / 2
    # HC3: a pair the fit leans on hides its own residual; undo that by its leverage h_j.
    leverage = (np.einsum("pi,ij,pj->p", inside, m, inside) + np.einsum("pi,ij,pj->p", outside, m, outside)) / (2 * pairs)
    influence = influence / np.maximum(1.0 - leverage, 1e-3)[:, None, None]
    dof = pairs - (n - 1)
    if clustered:
        influence = influence.reshape(len(totals), GROUP_PAIRS, *values.shape).mean(axis=1)
        influence += u[None, :, None] * (totals - totals.mean(axis=0))[:, None, :]
        dof = min(dof, len(totals) - 1)
    if dof < 1:
        return values, np.full_like(values, np.inf)
    return values, student_scale(dof) * influence.std(axis=0, ddof=1) / np.sqrt(len(influence))


@register("kernel")
class Kernel(Sampler):
    """Weighted least squares on paired coalitions with sum(phi) = v(N) - v(empty) imposed exactly.

    Coalition sizes s are drawn with probability proportional to (n-1)/(s(n-s)) (the
    Shapley kernel), then a uniform subset of that size, and always together with its
    complement, which cancels much of the variance (Covert & Lee 2021; exact for games
    with at most pairwise interactions). A = mean z z' and b = mean z (v(z) - v(empty));
    the efficiency constraint is solved in closed form. Standard errors use the delta
    method (a linearisation of the solution in A, b and the total) instead of a
    bootstrap: one pass over the pairs per batch instead of hundreds of re-solves.

    Sampling goes in groups of GROUP_PAIRS pairs under one outer context, whose
    v(empty) and v(N) give that group's targets v(z) - v(empty) and its share of the
    total, averaged over contexts. Drawing contexts as sampling proceeds (rather than a
    fixed set up front) lets the context noise shrink with the budget; the standard
    error then treats contexts as clusters. With one player the value is
    v(N) - v(empty) averaged over contexts (stderr as in "exact"); with two, every pair
    is the full enumeration, so the result is exact.

    Budget: a group costs at most GROUP_COST = 10 evaluations (8 for plain games, whose
    v(empty) and v(N) are memoised); batches of about (n + 1) pairs, growing to a
    quarter of the groups so far, go out while they fit. Always at least one group,
    at most four times the groups the budget buys without memoisation (binds only on
    games with few coalitions).
    """

    def minimum_budget(self, n_players: int) -> int:
        """One group, or every coalition of a game with fewer."""
        return min(GROUP_COST, 2**n_players)

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
        if n == 1:
            ends = np.array([[False], [True]])

            def attribute_in(context: Context) -> np.ndarray:
                values = game.evaluate(ends, [context, context])
                return values[1:] - values[:1]

            values, stderr, used = average_over_contexts(game, budget, 2, rng, attribute_in, target_stderr, progress, start)
            return Estimate(values, stderr, game.evaluations - start, self.name, samples=used)

        sizes = np.arange(1, n)
        size_p = 1.0 / (sizes * (n - sizes))
        size_p /= size_p.sum()
        contexts: list[Context] = []
        member_blocks: list[np.ndarray] = []
        blocks: dict[str, list[np.ndarray]] = {"empty": [], "full": [], "inside": [], "outside": []}
        cap = max_groups(budget, GROUP_COST)
        while True:
            affordable = (budget - (game.evaluations - start)) // GROUP_COST
            count = min(growing_batch(-(-(n + 1) // GROUP_PAIRS), len(contexts)), affordable, cap - len(contexts))
            if count < 1:
                if contexts:
                    break
                count = 1
            fresh = [game.sample_context(rng) for _ in range(count)]
            owners = [context for context in fresh for _ in range(GROUP_PAIRS)]
            size = rng.choice(sizes, size=len(owners), p=size_p)
            members = np.argsort(rng.random((len(owners), n)), axis=1) < size[:, None]
            ends = np.zeros((2 * count, n), dtype=bool)
            ends[count:] = True
            batch = game.evaluate(np.vstack([ends, members, ~members]), fresh + fresh + owners + owners)
            for name, part in zip(blocks, np.split(batch, np.cumsum([count, count, len(owners)]))):
                blocks[name].append(part)
            contexts += fresh
            member_blocks.append(members)
            table = pad_columns([block for parts in blocks.values() for block in parts])
            empty, full, inside, outside = np.split(table, np.cumsum([len(contexts), len(contexts), len(contexts) * GROUP_PAIRS]))
            owner = np.repeat(np.arange(len(contexts)), GROUP_PAIRS)
            values, stderr = _solve(
                np.vstack(member_blocks), inside - empty[owner], outside - empty[owner], full - empty, len(set(contexts)) > 1
            )
            report(progress, game.evaluations - start, budget, values, stderr)
            if done(stderr, target_stderr, len(contexts)):
                break
        pairs = len(contexts) * GROUP_PAIRS
        return Estimate(values, stderr, game.evaluations - start, self.name, samples=pairs, extras={"contexts": len(contexts)})
