"""Long-context cost: 10/20/40-passage NQ, three-level explanations with the prefix cache and adaptive allocation off vs on, and flat word-level Shapley.

Run from the repository root: `python -m bench.long_context [--quick] [--json PATH] [--model DIR]`.

- Prompts: NQ row 5's question with its gold passage among 9, 19 and 39 distractors
  (`hierarchy.data.nq_prompt`, seed 0), explained for the full prompt's greedy answer.
- "before" is today's engine: no prefix cache across batches (each batch recomputes
  its own shared prefix) and fixed budgets. "after": the prefix cache and
  `adaptive=True` (confidence 0.95) with the same per-level budgets as caps. Both:
  document → sentence → word, Owen mode, permutation sampling, seed 0, budget
  B per level (quick: 4(n_docs + 1), two antithetic document pairs; full: the default).
- "flat": word-level permutation Shapley over every word (one antithetic pair, as in
  `bench.hierarchy_vs_flat`), costed there: exact forwarded tokens with the prefix
  cache simulated at its real sizes, wall time extrapolated from real batches.
- Figures: evaluations, forwarded and total prompt tokens (total = forwarded + reused,
  what a pass-per-coalition engine would forward), the forwarded share, wall seconds,
  the speedup before/after, and whether the top document, sentence and word agree.
- 40 passages: "after" runs for real; "before" would double the run time, so in
  --quick it is only costed (exact tokens, extrapolated time, as the flat run; no values).
"""
from __future__ import annotations

from longshap.hierarchy import Explainer
from longshap.client.data import NQPrompt, load_nq, nq_prompt
from longshap.hierarchy.prompt import QAPrompt
from longshap.hierarchy.results import Explanation
from longshap.hierarchy.segmentation import Document, FeatureTree

from bench.common import parser, print_table, write_json
from bench.hierarchy_vs_flat import (
    PERMUTATIONS,
    TIMED_BATCHES,
    CostingScorer,
    flat_costed,
)

NQ_ROW = 5
PASSAGES = (10, 20, 40)
COSTED_BEFORE = 40
"""From this many passages --quick costs the before run instead of running it."""


def top_ids(result: Explanation) -> tuple[str, ...]:
    """The highest-valued unit of each level (document, sentence, word)."""
    return tuple(max(level.features, key=lambda f: f.value).id for level in result.levels)


def tokens(stats: dict) -> tuple[int, int]:
    """Forwarded and total prompt tokens of a run."""
    return stats["forward_tokens"], stats["forward_tokens"] + stats["reused_tokens"]


def explain(explainer: Explainer, prompt: NQPrompt, target: str, budget: int | None, after: bool, cache_bytes: int) -> Explanation:
    explainer.scorer.prefix_kv.max_bytes = cache_bytes if after else 0
    return explainer.explain(question=prompt.question, documents=prompt.documents, target=target, method="permutation",
                             budget=budget, seed=0, adaptive=after)


def greedy_answer(explainer: Explainer, prompt: NQPrompt) -> str:
    """The full prompt's greedy answer, computed once and given to every run as its target."""
    qa = QAPrompt(prompt.question, [Document(d["text"], d["title"]) for d in prompt.documents])
    full = qa.render(FeatureTree(qa.documents, explainer.scorer.tokenizer))
    return explainer.scorer.decode(explainer.scorer.greedy([full], 20)[0])


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--passages", type=int, nargs="+", default=list(PASSAGES), help="passage counts to run (default 10 20 40)")
    args = cli.parse_args()
    explainer = Explainer.from_pretrained(args.model)
    cache_bytes = explainer.scorer.prefix_kv.max_bytes
    nq = load_nq()
    table, figures = [], {}
    for passages in args.passages:
        prompt = nq_prompt(nq, NQ_ROW, passages - 1, seed=0)
        budget = 4 * (passages + 1) if args.quick else None
        target = greedy_answer(explainer, prompt)
        after = explain(explainer, prompt, target, budget, True, cache_bytes)
        n_words = sum(len(d["text"].split()) for d in prompt.documents)
        if args.quick and passages >= COSTED_BEFORE:
            before_stats, before_seconds = _before_costed(explainer, prompt, target, budget)
            agree, how = "n/a", "costed"
        else:
            before = explain(explainer, prompt, target, budget, False, cache_bytes)
            before_stats, before_seconds, how = before.stats, before.stats["wall_seconds"], "measured"
            agree = top_ids(before) == top_ids(after)
        explainer.scorer.prefix_kv.max_bytes = cache_bytes
        flat_stats, flat_seconds = flat_costed(explainer, prompt, target, PERMUTATIONS * (n_words + 1), TIMED_BATCHES, seed=0)
        rows = {"before": (before_stats, before_seconds), "after": (after.stats, after.stats["wall_seconds"]), "flat": (flat_stats, flat_seconds)}
        for name, (stats, seconds) in rows.items():
            forwarded, total = tokens(stats)
            table.append([
                passages, target if name == "before" else "", name, stats["coalitions"], forwarded, total, forwarded / total, seconds,
                before_seconds / seconds, {"before": how, "after": "measured", "flat": "extrapolated"}[name],
                "/".join(top_ids(after)) if name == "after" else (str(agree) if name == "before" else ""),
            ])
            figures[f"p{passages}_{name}_forward_tokens"] = forwarded
            figures[f"p{passages}_{name}_total_tokens"] = total
            figures[f"p{passages}_{name}_seconds"] = seconds
            figures[f"p{passages}_{name}_evaluations"] = stats["coalitions"]
        figures[f"p{passages}_speedup"] = before_seconds / after.stats["wall_seconds"]
        figures[f"p{passages}_same_top"] = agree
        _print(table, args.quick, explainer.loaded.name)
    write_json(args.json, {**figures, "quick": args.quick, "nq_row": NQ_ROW})


def _print(table: list, quick: bool, model: str) -> None:
    """The table so far: printed after every prompt size, so a run cut short still reports what it measured."""
    print_table(
        ["passages", "answer", "run", "evaluations", "forwarded tok", "total tok", "forwarded share", "wall s", "speedup vs before",
         "time", "top doc/sent/word (after) | same as before"],
        table,
        f"Long-context NQ (row {NQ_ROW}), document→sentence→word, {'quick budgets 4(n+1)/level' if quick else 'default budgets'}, "
        f"{model}; before = no prefix cache, fixed budgets; after = prefix cache + adaptive allocation",
    )
    print(flush=True)


def _before_costed(explainer: Explainer, prompt: NQPrompt, target: str, budget: int | None) -> tuple[dict, float]:
    """The before run's forwarded tokens (cache off, fixed budgets) and its time extrapolated from real batches."""
    costing = Explainer(explainer.loaded, max_batch_tokens=explainer.scorer.max_batch_tokens)
    costing.scorer = CostingScorer(explainer.loaded, max_batch_tokens=explainer.scorer.max_batch_tokens, prefix_cache_bytes=0)
    result = costing.explain(question=prompt.question, documents=prompt.documents, target=target, method="permutation", budget=budget, seed=0)
    seconds, forwarded = costing.scorer.time_sample(TIMED_BATCHES, seed=0)
    return result.stats, seconds / forwarded * result.stats["forward_tokens"]


if __name__ == "__main__":
    main()
