"""Document-level faithfulness on 10-passage NQ prompts: LongSHAP's estimators vs leave-one-out vs ContextCite.

Run from the repository root: `python -m bench.faithfulness [--quick] [--prompts N] [--cache DIR] [--json PATH] [--model DIR]`.

One game per prompt (gold passage + 9 passages of other rows, seeded): v(kept passages) =
log p(target | prompt with only those passages), on the default model, target = the gold
answer and (without --quick) also the model's greedy answer. Every method gets the same
value function and is charged every distinct coalition it asks for (a shared cache only
spares the model recomputing what another method already asked). ContextCite: keep-
probability-0.5 random ablations fitted by the `context-cite` package's own
`LassoRegression` solver (their algorithm, their code), at 32 and 64 evaluations.
Metrics as in the ContextCite paper: top-k log-probability drop (v(all) - v(all but the k
top-attributed passages), k = 1, 2, 3; larger is better), LDS (Spearman correlation of the
summed attributions of kept passages with the true value over 64 held-out keep-0.5
ablations), whether the gold passage is ranked first.

`--cache DIR` keeps each game's model values on disk (one .npz per prompt and target), so
a re-run with more methods only evaluates the coalitions no earlier run asked for; the
charged evaluations and seconds stay per method (a cached value is still charged to
every method that asks for it, at the measured seconds per evaluation).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from context_cite.solver import LassoRegression

from bench.common import parser, print_table, write_json
from longshap.hierarchy import Explainer
from longshap.hierarchy.errors import RequestError
from longshap.client.data import load_nq, nq_prompt
from longshap.hierarchy.estimators import estimate

DISTRACTORS = 9
HELD_OUT = 64
TOPS = (1, 2, 3)
LONGSHAP = [("loo", None), ("permutation", 32), ("kernel", 32), ("leverage", 32), ("regression_adjusted", 32), ("banzhaf_ls", 32),
            ("auto", 32), ("leverage", 64), ("regression_adjusted", 64), ("banzhaf_ls", 64), ("auto", 64)]
PROMPT_ROWS = (5, 11, 23, 42, 57, 88, 101, 150)
CONTEXTCITE_BUDGETS = (32, 64)


class CachedGame:
    """log p(target | kept passages), computed once per distinct mask for all methods (and runs, with a file)."""

    def __init__(self, probability, path: Path | None = None) -> None:
        self.probability, self.path = probability, path
        self.cache: dict[bytes, float] = {}
        self.model_seconds, self.model_evaluations = 0.0, 0
        if path is not None and path.exists():
            stored = np.load(path)
            self.cache = {row.tobytes(): float(v) for row, v in zip(stored["masks"], stored["values"])}
            self.model_seconds, self.model_evaluations = float(stored["seconds"]), int(stored["evaluations"])

    def __call__(self, keep: np.ndarray) -> np.ndarray:
        keep = np.atleast_2d(np.asarray(keep, dtype=bool))
        keys = [row.tobytes() for row in keep]
        missing = list(dict.fromkeys(k for k in keys if k not in self.cache))
        if missing:
            started = time.perf_counter()
            rows = np.array([np.frombuffer(k, dtype=bool) for k in missing])
            values = np.log(np.maximum(self.probability(rows), 1e-300))
            self.model_seconds += time.perf_counter() - started
            self.model_evaluations += len(missing)
            self.cache.update(zip(missing, values))
            self.save()
        return np.array([self.cache[k] for k in keys])

    def save(self) -> None:
        """Write every value so far (atomically: a run cut short keeps what it paid for)."""
        if self.path is None:
            return
        masks = np.array([np.frombuffer(k, dtype=bool) for k in self.cache])
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, masks=masks, values=np.array(list(self.cache.values())), seconds=self.model_seconds, evaluations=self.model_evaluations)
        partial.replace(self.path)


class Charged:
    """One method's view of the game: counts the distinct masks it asked for."""

    def __init__(self, game: CachedGame) -> None:
        self.game, self.seen = game, set()

    def __call__(self, keep: np.ndarray) -> np.ndarray:
        keep = np.atleast_2d(np.asarray(keep, dtype=bool))
        self.seen.update(row.tobytes() for row in keep)
        return self.game(keep)


def contextcite(game: Charged, n: int, budget: int, seed: int, answer_tokens: int) -> np.ndarray:
    masks = np.random.default_rng(seed).random((budget, n)) < 0.5
    weights, _ = LassoRegression().fit(masks, game(masks), answer_tokens)
    return weights


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation; the values are continuous, so ties do not occur."""
    return float(np.corrcoef(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))[0, 1])


def score(attribution: np.ndarray, game: CachedGame, held_out: np.ndarray, gold: int) -> dict[str, float]:
    n = len(attribution)
    full = game(np.ones((1, n), dtype=bool))[0]
    order = np.argsort(-attribution)
    drops = {}
    for k in TOPS:
        keep = np.ones((1, n), dtype=bool)
        keep[0, order[:k]] = False
        drops[f"top{k} drop"] = float(full - game(keep)[0])
    lds = spearman(held_out.astype(float) @ attribution, game(held_out))
    return {**drops, "LDS": lds, "gold first": float(order[0] == gold)}


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--prompts", type=int, default=None, help=f"how many NQ prompts (default: 1 with --quick, else {len(PROMPT_ROWS)})")
    cli.add_argument("--cache", type=Path, default=None, help="folder keeping each game's model values between runs")
    args = cli.parse_args()
    count = args.prompts or (1 if args.quick else len(PROMPT_ROWS))
    if not 1 <= count <= len(PROMPT_ROWS):
        cli.error(f"--prompts must be between 1 and {len(PROMPT_ROWS)}, got {count}")
    rows = list(PROMPT_ROWS[:count])
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    targets = ["gold"] if args.quick else ["gold", "greedy"]
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    nq = load_nq()
    results: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        prompt = nq_prompt(nq, row, DISTRACTORS, seed=0)
        for target_kind in targets:
            target = prompt.answers[0] if target_kind == "gold" else None
            try:
                units, probability = explainer.probability_function(
                    "document", question=prompt.question, documents=prompt.documents, target=target
                )
            except RequestError as error:  # e.g. an empty greedy answer: nothing to explain
                print(f"row {row} ({target_kind}): skipped, {error}", flush=True)
                continue
            n = len(units)
            game = CachedGame(probability, None if args.cache is None else args.cache / f"row{row}-{target_kind}.npz")
            held_out = np.random.default_rng(1000 + row).random((HELD_OUT, n)) < 0.5
            answer_tokens = max(1, len(explainer.engine.encode_offsets(prompt.answers[0])[0]))
            runs: list[tuple[str, np.ndarray, int, float]] = []
            for method, budget in LONGSHAP:
                charged = Charged(game)
                before = game.model_seconds
                started = time.perf_counter()
                result = estimate(charged, n, method, budget=budget, seed=row)
                label = f"{method} @{budget}" if budget else f"{method}"
                if method == "auto":
                    label += f" ({result.method})"
                seconds = time.perf_counter() - started - (game.model_seconds - before)
                runs.append((label, result.values, len(charged.seen), seconds))
            for budget in CONTEXTCITE_BUDGETS:
                charged = Charged(game)
                before = game.model_seconds
                started = time.perf_counter()
                weights = contextcite(charged, n, budget, row, answer_tokens)
                runs.append((f"ContextCite @{budget}", weights, len(charged.seen), time.perf_counter() - started - (game.model_seconds - before)))
            per_eval = game.model_seconds / max(1, game.model_evaluations)
            for label, attribution, evaluations, overhead in runs:
                figures = score(attribution, game, held_out, prompt.gold_index)
                figures.update(evaluations=float(evaluations), seconds=overhead + evaluations * per_eval)
                results.setdefault((target_kind, label), []).append(figures)
            print(f"row {row} ({target_kind}): {game.model_evaluations} distinct model evaluations, {per_eval:.2f} s each", flush=True)
    metrics = [*(f"top{k} drop" for k in TOPS), "LDS", "gold first", "evaluations", "seconds"]
    table, flat = [], {}
    for (target_kind, label), runs in results.items():
        means = {m: float(np.mean([r[m] for r in runs])) for m in metrics}
        table.append([target_kind, label, *(means[m] for m in metrics)])
        flat.update({f"{target_kind}/{label}/{m}": v for m, v in means.items()})
    print_table(
        ["target", "method", *metrics[:-1], "charged s"],
        table,
        f"Document-level faithfulness, {len(rows)} NQ prompts x 10 passages, default model; "
        "seconds = own overhead + evaluations x measured s/evaluation (machine shared with other jobs)",
    )
    write_json(args.json, flat)


if __name__ == "__main__":
    main()
