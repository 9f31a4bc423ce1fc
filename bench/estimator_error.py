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
import numpy as np

from longshap.hierarchy.estimators import estimate

from bench.synthetic import Interaction

N_PLAYERS = 10


def exact_targets(game: Interaction) -> dict[str, np.ndarray]:
    """Exact Shapley, Banzhaf and leave-one-out values (closed form): each estimator's own target."""
    shapley = game.shapley()
    return {"exact": shapley, "permutation": shapley, "kernel": shapley, "banzhaf": game.banzhaf(), "loo": game.loo()}


def run(budget: int, seeds: int, cubic: float) -> dict[str, dict[str, float]]:
    value_fn = Interaction(N_PLAYERS, seed=0, cubic=cubic)
    targets = exact_targets(value_fn)
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
            # An exact method (zero stderr) claims no interval: coverage does not apply.
            "coverage": float(np.mean(covered)) if np.any(np.array(stderr) > 0) else float("nan"),
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
            f"{row['mean_stderr']:>13.4f}{'—' if np.isnan(row['coverage']) else format(row['coverage'], '.3f'):>10}{row['evaluations']:>8.0f}{row['ms']:>9.1f}"
        )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({f"{method}.{key}": value for method, row in rows.items() for key, value in row.items()}, handle, indent=1)


if __name__ == "__main__":
    main()
