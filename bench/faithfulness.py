"""Faithfulness on NQ prompts by three yardsticks: LongSHAP's estimators and hierarchy vs leave-one-out vs ContextCite.

Run from the repository root:
`python -m bench.faithfulness [--quick] [--prompts N] [--targets gold greedy] [--levels document sentence] [--cache DIR] [--json PATH] [--model DIR]`.

Each game is one NQ prompt (its gold passage among 9 passages of other rows, seeded) and one
target: v(kept units) = log p(target | prompt with only those units), on the default model;
the target is the gold answer or the model's greedy answer.

- Document level (10 players): LongSHAP's estimators at 16, 32 and 64 evaluations,
  leave-one-out, and ContextCite at 32 and 64.
- Sentence level (every sentence of the 10 passages: ContextCite's own sources): ContextCite
  at 32 and 64 and leave-one-out on all sentences, against LongSHAP's hierarchy given the same
  total number of evaluations (documents, then the sentences of the documents above the
  threshold; a sentence of a document it did not expand gets its document's value split evenly).

ContextCite is the `context-cite` package's own `LassoRegression` solver on keep-1/2 ablations
(their algorithm, their code). Every method shares one value function and is charged every
distinct coalition it asks for; a shared cache only spares the model recomputing a coalition
another method already asked for. The hierarchy runs through `Explainer.explain` and is
charged the evaluations it reports.

Yardsticks (`longshap.hierarchy.metrics`), all on held-out ablations no method saw:
- LDS 1/2: Spearman correlation of summed attributions with the true value, over keep-1/2
  masks (ContextCite's training distribution);
- LDS unif: the same over masks whose size is uniform over 1..n-1;
- top-k drop: v(all) - v(all but the k top units), k = 1, 2, 3 (larger is better).
The paired table gives the mean difference, over games, of LongSHAP's default (`auto`) at 32
evaluations minus ContextCite at 64, with its standard error.

`--cache DIR` keeps each game's model values on disk (one .npz per game), so a cut-short or
extended run only evaluates coalitions no earlier run asked for.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from context_cite.solver import LassoRegression

from bench.common import parser, print_table, write_json
from longshap.client.data import load_nq, nq_prompt
from longshap.hierarchy import Explainer
from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.estimators import estimate
from longshap.hierarchy.metrics import ablation_masks, lds, top_k_drop

DISTRACTORS = 9
HELD_OUT = 32
"""Held-out masks of each kind per game."""
TOPS = (1, 2, 3)
DOCUMENT_METHODS = [
    ("loo", None), ("auto", 16), ("auto", 32), ("auto", 64), ("banzhaf_ls", 16), ("banzhaf_ls", 32), ("banzhaf_ls", 64),
    ("leverage", 32), ("leverage", 64), ("regression_adjusted", 64), ("proxy", 64), ("odd", 64), ("kadd", 32),
]
"""At one seed the paired designs at 64 (leverage, regression_adjusted, proxy, odd) draw the same coalitions."""
HIERARCHY_BUDGETS = (32, 64)
CONTEXTCITE_BUDGETS = (32, 64)
PROMPT_ROWS = (5, 11, 23, 42, 57, 88, 101, 150, 203, 256, 311, 377, 420, 468, 512, 600)
DEFAULT_PROMPTS = 12
METRICS = ("top1 drop", "top2 drop", "top3 drop", "LDS 1/2", "LDS unif", "gold first")
PAIRED = ("default @32", "ContextCite @64")


class CachedGame:
    """log p(target | kept units), computed once per distinct mask for all methods (and runs, with a file)."""

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

    @property
    def seconds_per_evaluation(self) -> float:
        return self.model_seconds / max(1, self.model_evaluations)

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


@dataclass
class Run:
    """One method's attribution of one game, with what it cost."""

    label: str
    values: np.ndarray
    evaluations: int
    seconds: float


def timed(game: CachedGame, attribute) -> Run:
    """Run `attribute(charged_game)`; seconds = own overhead + its distinct evaluations x the game's s/evaluation."""
    charged = Charged(game)
    before, started = game.model_seconds, time.perf_counter()
    values, label = attribute(charged)
    overhead = time.perf_counter() - started - (game.model_seconds - before)
    return Run(label, np.asarray(values, dtype=float), len(charged.seen), overhead + len(charged.seen) * game.seconds_per_evaluation)


def contextcite_runs(game: CachedGame, n: int, seed: int, answer_tokens: int) -> list[Run]:
    def fit(budget: int):
        def attribute(charged: Charged):
            masks = np.random.default_rng(seed).random((budget, n)) < 0.5
            weights, _ = LassoRegression().fit(masks, charged(masks), answer_tokens)
            return weights, f"ContextCite @{budget}"

        return attribute

    return [timed(game, fit(budget)) for budget in CONTEXTCITE_BUDGETS]


def estimator_run(game: CachedGame, n: int, method: str, budget: int | None, seed: int) -> Run:
    def attribute(charged: Charged):
        result = estimate(charged, n, method, budget=budget, seed=seed)
        label = f"{method} @{budget}" if budget else method
        return result.values, label + (f" ({result.method})" if method == "auto" else "")

    return timed(game, attribute)


def hierarchy_run(explainer: Explainer, prompt, target: str | None, units: list[str], budget: int, seed: int) -> Run:
    """Documents then sentences with `budget` evaluations in all; unexpanded documents' sentences share their value."""
    started = time.perf_counter()
    explanation = explainer.explain(
        question=prompt.question, documents=prompt.documents, target=target, levels=["document", "sentence"],
        total_budget=budget, seed=seed,
    )
    documents = {f.id: f.value for f in explanation.level("document").features}
    sentences = {f.id: f.value for level in explanation.levels if level.level == "sentence" for f in level.features}
    parents = [unit.split(".")[0] for unit in units]
    siblings = Counter(parents)
    values = [sentences.get(unit, documents[parent] / siblings[parent]) for unit, parent in zip(units, parents)]
    evaluations = sum(level.evaluations for level in explanation.levels)
    print(f"  hierarchy @{budget}: {evaluations} evaluations, levels run: "
          + ", ".join(f"{level.level} ({level.method}, {len(level.features)} units)" for level in explanation.levels), flush=True)
    return Run(f"hierarchy @{budget}", np.array(values), evaluations, time.perf_counter() - started)


def score(run: Run, game: CachedGame, held_out: dict[str, np.ndarray], is_gold) -> dict[str, float]:
    figures = dict(zip(METRICS[:3], top_k_drop(game, run.values, TOPS)))
    figures["LDS 1/2"] = lds(run.values, held_out["half"], game(held_out["half"]))
    figures["LDS unif"] = lds(run.values, held_out["uniform_size"], game(held_out["uniform_size"]))
    figures["gold first"] = float(is_gold(int(np.argsort(-run.values, kind="stable")[0])))
    figures.update(evaluations=float(run.evaluations), seconds=run.seconds)
    return figures


def play(explainer: Explainer, prompt, row: int, target_kind: str, level: str, cache: Path | None) -> dict[str, dict] | None:
    """Every method's figures on one game, keyed by method label (None: the game cannot be played)."""
    target = prompt.answers[0] if target_kind == "gold" else None
    try:
        units, probability = explainer.probability_function(level, question=prompt.question, documents=prompt.documents, target=target)
    except RequestError as error:  # e.g. an empty greedy answer: nothing to explain
        print(f"row {row} ({target_kind}, {level}): skipped, {error}", flush=True)
        return None
    n = len(units)
    game = CachedGame(probability, None if cache is None else cache / f"{level}-row{row}-{target_kind}.npz")
    rng = np.random.default_rng(1000 + row)
    held_out = {kind: ablation_masks(n, HELD_OUT, kind, rng) for kind in ("half", "uniform_size")}
    answer_tokens = max(1, len(explainer.engine.encode_offsets(prompt.answers[0])[0]))
    runs = [estimator_run(game, n, "loo", None, row)]
    if level == "document":
        runs += [estimator_run(game, n, method, budget, row) for method, budget in DOCUMENT_METHODS if method != "loo"]
    else:
        runs += [hierarchy_run(explainer, prompt, target, units, budget, row) for budget in HIERARCHY_BUDGETS]
    runs += contextcite_runs(game, n, row, answer_tokens)
    gold = f"d{prompt.gold_index}"

    def is_gold(index: int) -> bool:
        return units[index] == gold or units[index].startswith(gold + ".")

    figures = {run.label: score(run, game, held_out, is_gold) for run in runs}
    default = next(label for label in figures if label.startswith("auto @32") or label.startswith("hierarchy @32"))
    figures[PAIRED[0]] = figures[default]
    print(f"row {row} ({target_kind}, {level}, {n} units): {game.model_evaluations} distinct model evaluations, "
          f"{game.seconds_per_evaluation:.2f} s each", flush=True)
    return figures


def summarise(results: dict[tuple[str, str], list[dict[str, dict]]]) -> tuple[list[list], list[list], dict]:
    """Mean figures per method, and the paired default-minus-ContextCite differences with standard errors."""
    table, paired, flat = [], [], {}
    for (level, target_kind), games in results.items():
        labels = list(dict.fromkeys(label for game in games for label in game if label != PAIRED[0]))
        for label in labels:
            rows = [game[label] for game in games if label in game]
            means = {m: float(np.nanmean([r[m] for r in rows])) for m in (*METRICS, "evaluations", "seconds")}
            table.append([level, target_kind, label, *means.values()])
            flat.update({f"{level}/{target_kind}/{label}/{m}": v for m, v in means.items()})
        line = [level, target_kind, len(games)]
        for metric in METRICS[:5]:
            differences = np.array([game[PAIRED[0]][metric] - game[PAIRED[1]][metric] for game in games])
            differences = differences[np.isfinite(differences)]
            stderr = differences.std(ddof=1) / np.sqrt(len(differences)) if len(differences) > 1 else np.inf
            line.append(f"{differences.mean():+.3f} ± {stderr:.3f}")
            flat[f"{level}/{target_kind}/default-minus-contextcite64/{metric}"] = float(differences.mean())
        paired.append(line)
    return table, paired, flat


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--prompts", type=int, default=None, help=f"how many NQ prompts (default: 1 with --quick, else {DEFAULT_PROMPTS})")
    cli.add_argument("--targets", nargs="+", choices=["gold", "greedy"], default=None, help="explained answers (default: both; gold with --quick)")
    cli.add_argument("--levels", nargs="+", choices=["document", "sentence"], default=["document", "sentence"], help="levels to measure")
    cli.add_argument("--cache", type=Path, default=None, help="folder keeping each game's model values between runs")
    args = cli.parse_args()
    count = args.prompts or (1 if args.quick else DEFAULT_PROMPTS)
    if not 1 <= count <= len(PROMPT_ROWS):
        cli.error(f"--prompts must be between 1 and {len(PROMPT_ROWS)}, got {count}")
    targets = args.targets or (["gold"] if args.quick else ["gold", "greedy"])
    if args.cache is not None:
        args.cache.mkdir(parents=True, exist_ok=True)
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    nq = load_nq()
    results: dict[tuple[str, str], list[dict[str, dict]]] = {}
    for level in args.levels:
        for target_kind in targets:
            for row in PROMPT_ROWS[:count]:
                figures = play(explainer, nq_prompt(nq, row, DISTRACTORS, seed=0), row, target_kind, level, args.cache)
                if figures is not None:
                    results.setdefault((level, target_kind), []).append(figures)
    table, paired, flat = summarise(results)
    print_table(["level", "target", "method", *METRICS, "evaluations", "charged s"], table,
                f"Faithfulness, NQ prompts of 10 passages, default model, means over games ({HELD_OUT} held-out masks of each kind); "
                "charged s = own overhead + evaluations x measured s/evaluation")
    print_table(["level", "target", "games", *METRICS[:5]], paired,
                f"{PAIRED[0]} minus {PAIRED[1]}, paired over games: mean ± standard error (positive: LongSHAP ahead)")
    write_json(args.json, flat)


if __name__ == "__main__":
    main()
