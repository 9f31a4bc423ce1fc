"""Accuracy and cost of each estimator on a fixed 10-player interaction game.

Run from the repository root: `python -m bench.estimator_error [--json PATH]`.

The game has random pairwise and (by default) third-order interactions. With only
pairwise terms (`--cubic 0`), antithetic permutations and paired KernelSHAP are exact,
so the third-order terms are what make the comparison informative.
"""
from __future__ import annotations

import argparse
import json
import time
from itertools import permutations

import numpy as np

from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.estimators._stats import all_coalitions

N_PLAYERS = 10


def interaction_game(n: int, seed: int, cubic: float):
    """v(S) = sum a_i + sum_{i<j} b_ij + sum_{i<j<l} c_ijl over members of S, with random coefficients."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=n)
    b = np.triu(rng.normal(size=(n, n)), 1)
    c = rng.normal(size=(n, n, n)) * cubic
    i, j, k = np.indices((n, n, n))
    c[(i == j) | (j == k) | (i == k)] = 0.0
    b, c = b + b.T, sum(np.transpose(c, axes) for axes in permutations(range(3)))

    def value_fn(coalitions: np.ndarray) -> np.ndarray:
        z = coalitions.astype(float)
        return z @ a + np.einsum("mi,ij,mj->m", z, b, z) / 2 + np.einsum("mi,ijl,mj,ml->m", z, c, z, z, optimize=True) / 6

    return value_fn


def exact_targets(value_fn, n: int) -> dict[str, np.ndarray]:
    """Exact Shapley, Banzhaf and leave-one-out values: each estimator's own target."""
    coalitions = all_coalitions(n)
    table = value_fn(coalitions)
    rows = np.arange(2**n)
    banzhaf = np.array([np.mean(table[rows[(rows >> i) & 1 == 0] | (1 << i)] - table[rows[(rows >> i) & 1 == 0]]) for i in range(n)])
    loo = table[-1] - table[(2**n - 1) ^ (1 << np.arange(n))]
    shapley = estimate(value_fn, n, "exact").values
    return {"exact": shapley, "permutation": shapley, "kernel": shapley, "banzhaf": banzhaf, "loo": loo}


def run(budget: int, seeds: int, cubic: float) -> dict[str, dict[str, float]]:
    value_fn = interaction_game(N_PLAYERS, seed=0, cubic=cubic)
    targets = exact_targets(value_fn, N_PLAYERS)
    rows: dict[str, dict[str, float]] = {}
    for method in targets:
        shapley_error, own_error, stderr, evaluations, seconds, covered = [], [], [], [], [], []
        for seed in range(seeds):
            started = time.perf_counter()
            result = estimate(value_fn, N_PLAYERS, method, budget=None if method == "exact" else budget, seed=seed)
            seconds.append(time.perf_counter() - started)
            shapley_error.append(np.abs(result.values - targets["exact"]).mean())
            own_error.append(np.abs(result.values - targets[method]).mean())
            stderr.append(result.stderr.mean())
            covered.append(np.abs(result.values - targets[method]) <= 1.96 * result.stderr)
            evaluations.append(result.evaluations)
        rows[method] = {
            "mae_shapley": float(np.mean(shapley_error)),
            "mae_own": float(np.mean(own_error)),
            "mean_stderr": float(np.mean(stderr)),
            "coverage": float(np.mean(covered)),
            "evaluations": float(np.mean(evaluations)),
            "ms": 1000 * float(np.mean(seconds)),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--cubic", type=float, default=0.3, help="scale of the third-order interactions")
    parser.add_argument("--json", metavar="PATH", help="also write a flat {method.metric: value} dict")
    args = parser.parse_args()
    rows = run(args.budget, args.seeds, args.cubic)
    print(f"{N_PLAYERS} players, budget {args.budget} (exact: {2**N_PLAYERS}), mean over {args.seeds} seeds, cubic={args.cubic}")
    print("coverage: share of (seed, player) where |estimate - own exact target| <= 1.96 stderr")
    print(f"{'method':<12}{'MAE vs Shapley':>16}{'MAE vs own':>12}{'mean stderr':>13}{'coverage':>10}{'evals':>8}{'ms':>9}")
    for method, row in rows.items():
        print(
            f"{method:<12}{row['mae_shapley']:>16.4f}{row['mae_own']:>12.4f}"
            f"{row['mean_stderr']:>13.4f}{row['coverage']:>10.3f}{row['evaluations']:>8.0f}{row['ms']:>9.1f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({f"{method}.{key}": value for method, row in rows.items() for key, value in row.items()}, handle, indent=1)


if __name__ == "__main__":
    main()
