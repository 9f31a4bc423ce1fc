"""LongSHAP's estimators against shapiq's on games with exact values, at equal charged evaluations.

Every game (n = 10..16) has its Shapley and Banzhaf values computed exactly from all 2**n
coalitions. Each method gets budgets 2n..50n; every row any method asks the game for is
counted (shapiq's included), and LongSHAP's own count of distinct evaluations is checked
against it. Reported: relative L2 error ||phi_hat - phi|| / ||phi|| (geometric mean over
games of the mean over seeds, each game's error floored at ERROR_FLOOR first, so a game an
estimator solves exactly, e.g. antithetic permutations on the pairwise game at ~1e-15,
cannot dominate the mean), the worst game's ratio to the best shapiq Shapley method on that
game (floored likewise) and, for LongSHAP, the share of players whose true value lies
within 2 reported standard errors (inf counts as covering: it claims nothing), over
--coverage-seeds seeds (default 40: with 10 seeds x 12 players a calibrated estimator
still shows a cell under 0.90 about one time in twenty; errors use the first --seeds
ones, the seeds every method shares). --json keeps the unfloored per-game errors and coverages.

The shapiq methods are every Shapley approximator the installed release lists (shapiq >= 1.5
adds OddSHAP, ProxySHAP, RegressionMSR, PolySHAP, LeverageSHAP, ...; see `shapiq_methods`),
each skipped with a printed reason if it cannot run. shapiq >= 1.5 needs Python >= 3.12, so
`make bench-shapiq` runs this module in a venv of its own without torch:
`.venv-shapiq/bin/python -m bench.estimators_vs_shapiq`. With an older shapiq in the main venv,
`python -m bench.estimators_vs_shapiq` still runs the methods that release has.
"""
from __future__ import annotations

import contextlib
import os
import re
import time
import warnings
from typing import Iterator

import numpy as np
import shapiq
import shapiq.approximator as approximators

from bench.common import parser, print_table, write_json
from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.estimators._stats import all_coalitions, shapley_from_table

MULTIPLES = (2, 5, 10, 20, 50)
ERROR_FLOOR = 1e-6
"""Per-game relative errors below this count as this before geometric means and ratios: exact."""


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
    return -np.logaddexp(0.0, -x)


def make_games(rng: np.random.Generator) -> dict[str, tuple[int, object]]:
    """name -> (n, value function on boolean coalitions (m, n) -> (m,))."""
    games: dict[str, tuple[int, object]] = {}
    weights = rng.integers(1, 10, size=12).astype(float)
    games["voting n=12"] = (12, lambda z, w=weights: (z @ w >= w.sum() / 2).astype(float))
    a, b = rng.normal(size=14), np.triu(rng.normal(size=(14, 14)), 1)
    games["pairwise n=14"] = (14, lambda z, a=a, b=b: z @ a + np.einsum("mi,ij,mj->m", z * 1.0, b, z * 1.0))
    a3, b3, c3 = rng.normal(size=12), np.triu(rng.normal(size=(12, 12)), 1) * 0.5, rng.normal(size=(12, 12, 12)) * 0.3
    games["third-order n=12"] = (
        12,
        lambda z, a=a3, b=b3, c=c3: z @ a
        + np.einsum("mi,ij,mj->m", z * 1.0, b, z * 1.0)
        + np.einsum("mi,ijl,mj,ml->m", z * 1.0, np.triu(c, 1), z * 1.0, z * 1.0, optimize=True),
    )
    w = rng.normal(size=16) * 1.5
    games["log-sigmoid n=16"] = (16, lambda z, w=w: _log_sigmoid(z @ w - 1.0))
    small = rng.normal(size=15) * 0.05
    games["dominant n=16"] = (
        16,
        lambda z, s=small: _log_sigmoid(4.0 * z[:, 0] - 2.0 + z[:, 1:] @ s) + 0.3 * z[:, 0] * (z[:, 1:] @ np.abs(s)),
    )
    w10 = rng.normal(size=10) * 2
    games["log-sigmoid n=10"] = (10, lambda z, w=w10: _log_sigmoid(z @ w - 0.5))
    return games


def exact_values(n: int, value_fn) -> tuple[np.ndarray, np.ndarray]:
    coalitions = all_coalitions(n)
    table = np.asarray(value_fn(coalitions), dtype=float)[:, None]
    shapley = shapley_from_table(table, n)[:, 0]
    banzhaf = np.array([table[coalitions[:, i], 0].mean() - table[~coalitions[:, i], 0].mean() for i in range(n)])
    return shapley, banzhaf


class Charged:
    """Counts every row a method asks for."""

    def __init__(self, value_fn) -> None:
        self.value_fn, self.rows = value_fn, 0

    def __call__(self, coalitions: np.ndarray) -> np.ndarray:
        coalitions = np.atleast_2d(np.asarray(coalitions, dtype=bool))  # shapiq sometimes asks for one 1-D row
        self.rows += len(coalitions)
        return np.asarray(self.value_fn(coalitions), dtype=float)


LONGSHAP = {
    "permutation": "shapley", "kernel": "shapley", "leverage": "shapley", "kadd": "shapley", "regression_adjusted": "shapley",
    "odd": "shapley", "proxy": "shapley", "select": "shapley", "auto": "shapley", "banzhaf": "banzhaf", "banzhaf_ls": "banzhaf",
}

SETTINGS: dict[str, tuple[str, dict]] = {
    "KernelSHAP": ("KernelSHAP(paired)", {"pairing_trick": True}),
    "kADDSHAP": ("kADDSHAP(2, paired)", {"max_order": 2, "pairing_trick": True}),
    "UnbiasedKernelSHAP": ("UnbiasedKernelSHAP(paired)", {"pairing_trick": True}),
    "SVARM": ("SVARM", {}),
    "ProxySHAP": ("ProxySHAP(SV, xgboost)", {"index": "SV", "max_order": 1}),
    "RegressionMSR": ("RegressionMSR(SV, xgboost)", {"index": "SV"}),
    "ProxySPEX": ("ProxySPEX(SV, lightgbm, no HPO)", {"index": "SV", "max_order": 1, "hpo": False}),
}
"""Constructor arguments where a class's defaults do not estimate Shapley values as its paper does.

The rest run with their defaults (LeverageSHAP, OddSHAP and PolySHAP pair coalitions by default).
ProxySPEX's hyperparameter search (its default) costs ~6 s a call on two cores, 30 minutes over the
300 calls of a full run, so it runs with its default LightGBM model untuned."""


def shapiq_methods() -> tuple[dict[str, tuple[str, object]], list[str]]:
    """Every Shapley approximator the installed shapiq has, found by introspection, and why any is left out.

    shapiq lists them in SV_APPROXIMATORS (ProxySHAP, which estimates any index, is added);
    older releases without that list get the five this benchmark always ran. Each is tried on a
    small game first: one that cannot be built or run (a missing optional extra) is skipped, and
    the reason is printed. RegressionFBII(1) is the Banzhaf peer.
    """
    names = [cls.__name__ for cls in getattr(approximators, "SV_APPROXIMATORS", [])]
    names = names or ["KernelSHAP", "kADDSHAP", "SVARM", "PermutationSamplingSV"]
    if hasattr(approximators, "ProxySHAP") and "ProxySHAP" not in names:
        names.append("ProxySHAP")
    methods: dict[str, tuple[str, object]] = {}
    skipped: list[str] = []
    probe = np.random.default_rng(0).normal(size=6)
    for name in [*names, "RegressionFBII"]:
        label, kwargs = SETTINGS.get(name, (name, {}))
        if name == "RegressionFBII":
            label, kwargs = "RegressionFBII(1)", {"max_order": 1}
        cls = getattr(approximators, name, None)

        def make(n: int, seed: int, cls=cls, kwargs=kwargs) -> object:
            return cls(n=n, random_state=seed, **kwargs)

        try:
            with warnings.catch_warnings(), _quiet():
                warnings.simplefilter("ignore")
                values = make(6, 0).approximate(40, lambda z: np.atleast_2d(z).astype(float) @ probe)
            if values.index not in ("SV", "BV", "kADD-SHAP"):  # kADD-SHAP's first order are Shapley values
                raise ValueError(f"returns index {values.index}, not Shapley or Banzhaf values")
        except Exception as error:  # noqa: BLE001  (any failure: report it and go on)
            error = getattr(cls, "_import_error", error)  # placeholders of a missing extra keep the ImportError
            skipped.append(f"shapiq {name}: {type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}")
            continue
        methods[f"shapiq {label}"] = ("banzhaf" if name == "RegressionFBII" else "shapley", make)
    return methods, skipped


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the libraries' own prints (LightGBM logs every fit on stdout)."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def run_longshap(method: str, n: int, value_fn, budget: int, seed: int) -> tuple[np.ndarray, np.ndarray, int, str]:
    charged = Charged(value_fn)
    result = estimate(charged, n, method, budget=budget, seed=seed)
    assert result.evaluations == charged.rows, (method, result.evaluations, charged.rows)  # memoised: rows are distinct
    return result.values, result.stderr, charged.rows, result.method


def run_shapiq(make, n: int, value_fn, budget: int, seed: int) -> tuple[np.ndarray, int]:
    charged = Charged(value_fn)
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore")
        values = make(n, seed).approximate(budget, charged)
    first = np.array([values[(i,)] for i in range(n)])
    return first, charged.rows


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--coverage-seeds", type=int, default=None, help="seeds for LongSHAP's coverage (default 40, --quick 10)")
    cli.add_argument("--multiples", type=int, nargs="+", default=None, help="budgets as multiples of n (default 2 5 10 20 50, --quick 2 5 20)")
    cli.add_argument("--methods", default=None, help="only the methods whose name matches this regular expression (auto and the shapiq Shapley methods are always run)")
    args = cli.parse_args()
    shapiq_all, skipped = shapiq_methods()
    for reason in skipped:
        print(f"skipped {reason}")
    wanted = re.compile(args.methods) if args.methods else None
    longshap = {m: t for m, t in LONGSHAP.items() if wanted is None or m == "auto" or wanted.search(m)}
    shapiq_run = {m: v for m, v in shapiq_all.items() if wanted is None or v[0] == "shapley" or wanted.search(m)}
    seeds = range(3 if args.quick else 10)
    coverage_seeds = range(max(len(seeds), args.coverage_seeds or (10 if args.quick else 40)))
    multiples = tuple(args.multiples or ((2, 5, 20) if args.quick else MULTIPLES))
    games = make_games(np.random.default_rng(2025))
    truths = {name: exact_values(n, fn) for name, (n, fn) in games.items()}
    errors: dict[tuple[str, int], list[float]] = {}  # (method, multiple) -> per-game mean error
    coverage: dict[tuple[str, int], list[float]] = {}
    spent: dict[tuple[str, int], list[float]] = {}
    chosen: dict[int, set[str]] = {}
    figures: dict[str, float] = {}
    started = time.perf_counter()
    for game_name, (n, fn) in games.items():
        shapley, banzhaf = truths[game_name]
        for multiple in multiples:
            budget = multiple * n
            for method, target in {**longshap, **{k: v[0] for k, v in shapiq_run.items()}}.items():
                truth = shapley if target == "shapley" else banzhaf
                errs, covered, used = [], [], []
                for seed in coverage_seeds if method in longshap else seeds:
                    if method in longshap:
                        values, stderr, rows, ran = run_longshap(method, n, fn, budget, seed)
                        if method == "auto":
                            chosen.setdefault(multiple, set()).add(ran)
                        slack = 1e-9 * np.linalg.norm(truth)  # exact fits: float noise, not an error claim
                        covered.append(np.mean(np.abs(values - truth) <= 2 * stderr + slack))
                        if seed >= len(seeds):
                            continue  # a coverage-only seed
                    else:
                        values, rows = run_shapiq(shapiq_run[method][1], n, fn, budget, seed)
                    errs.append(np.linalg.norm(values - truth) / np.linalg.norm(truth))
                    used.append(rows / budget)
                key = (method, multiple)
                errors.setdefault(key, []).append(float(np.mean(errs)))
                spent.setdefault(key, []).append(float(np.mean(used)))
                if covered:
                    coverage.setdefault(key, []).append(float(np.mean(covered)))
                figures[f"error/{game_name}/{method}/{multiple}n"] = float(np.mean(errs))
                if covered:
                    figures[f"coverage/{game_name}/{method}/{multiple}n"] = float(np.mean(covered))
    rows = []
    floored = {key: np.maximum(np.array(values), ERROR_FLOOR) for key, values in errors.items()}
    shapiq_shapley = [m for m, (t, _) in shapiq_run.items() if t == "shapley"]
    names = list(games)
    for multiple in multiples:
        best_shapiq = min((np.exp(np.mean(np.log(floored[(m, multiple)]))), m) for m in shapiq_shapley)
        best_per_game = np.min([floored[(m, multiple)] for m in shapiq_shapley], axis=0)
        for method in [*longshap, *shapiq_run]:
            key = (method, multiple)
            geo = float(np.exp(np.mean(np.log(floored[key]))))
            ratio = np.exp(np.mean(np.log(floored[key] / floored[(best_shapiq[1], multiple)])))
            per_game = floored[key] / best_per_game
            worst = int(np.argmax(per_game))
            cover = f"{np.mean(coverage[key]):.3f} ({min(coverage[key]):.2f}-{max(coverage[key]):.2f})" if key in coverage else "-"
            shown = "shapley" if (longshap.get(method) or shapiq_run[method][0]) == "shapley" else "banzhaf"
            rows.append([
                f"{multiple}n", method, shown, geo,
                float(ratio) if shown == "shapley" else "-",
                f"{per_game[worst]:.3g} ({names[worst]})" if shown == "shapley" else "-",
                cover, float(np.mean(spent[key])),
            ])
            figures[f"geomean_error/{method}/{multiple}n"] = geo
            if shown == "shapley":
                figures[f"worst_over_best_shapiq/{method}/{multiple}n"] = float(per_game[worst])
        figures[f"auto_over_best_shapiq/{multiple}n"] = float(
            np.exp(np.mean(np.log(floored[("auto", multiple)] / floored[(best_shapiq[1], multiple)])))
        )
        figures[f"auto_worst_over_best_shapiq/{multiple}n"] = float(np.max(floored[("auto", multiple)] / best_per_game))
    print_table(
        [
            "budget", "method", "value", "rel. L2 error (geo-mean)", "÷ best shapiq Shapley",
            "worst game ÷ its best shapiq", "2-se coverage mean (min-max over games)", "evals / budget",
        ],
        rows,
        f"Estimators vs shapiq {shapiq.__version__}: {len(games)} games, {len(seeds)} seeds ({len(coverage_seeds)} for coverage), every evaluation charged; "
        f"per-game errors floored at {ERROR_FLOOR:g} before geometric means and ratios "
        f"({time.perf_counter() - started:.0f} s)",
    )
    print("\nauto chose: " + ", ".join(f"{m}n: {sorted(c)}" for m, c in sorted(chosen.items())))
    figures["error_floor"] = ERROR_FLOOR
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
