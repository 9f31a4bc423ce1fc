"""Long-context cost: 10/20/40-passage NQ, three-level explanations: today's engine vs the engine now, and flat word-level Shapley.

Run from the repository root: `python -m bench.long_context [--quick] [--passages 10 20] [--runs before after after-bf16 flat]
[--kv-mode exact blend] [--blend-recompute S ...] [--json PATH]`.

- Prompts: NQ row 5's question with its gold passage among 9, 19 and 39 distractors
  (`client.data.nq_prompt`, seed 0), explained for the full prompt's greedy answer.
- "before" is the engine as the scale issue found it: `permutation` sampling, no prefix
  cache across batches (each batch recomputes its own shared prefix), every level
  spends its budget, plain SDPA attention. "after" is the engine now: the default
  estimator (`auto`), the prefix cache, `adaptive=True` (confidence 0.95, ties within
  5% of the effect, no rounds for decisions the rest of the budget cannot settle) with
  the same per-level budgets as caps, and the default attention (on CPUs block-bounded
  SDPA, `hierarchy.attention`), on the float32 model. "after-bf16" is "after"
  on a bfloat16 copy of the model (`--dtype bfloat16`: the fast path on CPUs with
  AMX/AVX512-BF16 and on GPUs); its document values are compared with after's. All:
  document → sentence → word, Owen mode, seed 0, budget B per level (quick:
  4(n_docs + 1); full: each estimator's default, 10(n + 1) per game).
- "flat": word-level permutation Shapley over every word (one antithetic pair, as in
  `bench.hierarchy_vs_flat`), costed there: exact forwarded tokens with the prefix
  cache simulated at its real sizes, wall time extrapolated from real batches.
- Figures: evaluations, forwarded and total prompt tokens (total = forwarded + reused,
  what a pass-per-coalition engine would forward), the forwarded share, the prefix-tree
  share (tokens in the prefix tree of every scored sequence over total: the least any
  exact engine that shares common prefixes could forward for the same coalitions), wall seconds,
  the speedup vs before, whether the top document, sentence and word agree, (after runs) how
  many units of each level adaptive allocation left unsettled when its budget ran out, and
  how far bfloat16 moved the document values from float32's.
- `--kv-mode blend` adds, for each "after" run made, "<run>-blend-S": the same run with
  `kv_mode="blend"` at each recompute share S of `--blend-recompute` (default: the option's
  default) and the default tolerance (`hierarchy.kv_blend`), on the same prompt and target.
  Its row adds the self-check's largest and mean difference (relative to the total effect;
  "fell back" when the request ran exact) and the Spearman correlation of its document
  values with its exact run's. `--kv-mode exact` alone (the default) makes no blended run.
- A run left out with --runs is not estimated: its cells say so.
"""
from __future__ import annotations

from longshap.hierarchy import Explainer
from longshap.hierarchy.options import KV_MODES, OPTIONS
from longshap.client.data import NQPrompt, load_nq, nq_prompt
from longshap.hierarchy.prompt import QAPrompt
from longshap.hierarchy.results import Explanation
from longshap.hierarchy.engines import Engine
from longshap.hierarchy.engines.planning import common_prefix
from longshap.hierarchy.segmentation import Document, FeatureTree

from bench.common import parser, print_table, spearman, write_json
from bench.hierarchy_vs_flat import PERMUTATIONS, TIMED_BATCHES, flat_costed

NQ_ROW = 5
PASSAGES = (10, 20, 40)
RUNS = ("before", "after", "after-bf16", "flat")


def top_ids(result: Explanation) -> tuple[str, ...]:
    """The highest-valued unit of each level (document, sentence, word)."""
    return tuple(max(level.features, key=lambda f: f.value).id for level in result.levels)


def tokens(stats: dict) -> tuple[int, int]:
    """Forwarded and total prompt tokens of a run."""
    return stats["forward_tokens"], stats["forward_tokens"] + stats["reused_tokens"]


def trie_tokens(rows: list[tuple[int, ...]]) -> int:
    """Tokens in the prefix tree of `rows`: what an ideal exact engine, sharing every common prefix, must forward."""
    ordered = sorted(set(rows))
    return sum(len(row) - common_prefix(previous, row) for previous, row in zip([(), *ordered], ordered))


class RecordingEngine:
    """An engine that passes every call on and records the token sequences it scores (prompt + continuation)."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.capabilities, self.architecture, self.max_batch_tokens = inner.capabilities, inner.architecture, inner.max_batch_tokens
        self.scored: list[tuple[int, ...]] = []

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def score(self, rows, context):
        # A row of single-token continuations is one sequence, the prompt; longer continuations are scored one by one.
        for prompt, continuations in rows:
            singles = all(len(c) == 1 for c in continuations)
            self.scored.extend([tuple(prompt)] if singles else [tuple(prompt) + tuple(c) for c in continuations])
        return self.inner.score(rows, context)

    def score_tokens(self, rows, context):
        self.scored.extend(tuple(prompt) + tuple(continuation) for prompt, continuation in rows)
        return self.inner.score_tokens(rows, context)


def explain(explainer: Explainer, prompt: NQPrompt, target: str, budget: int | None, after: bool, blend: float | None = None) -> tuple[Explanation, int]:
    """One run (blended at recompute share `blend` if given), with the token count of the prefix tree of every sequence it scored."""
    method = {} if after else {"method": "permutation"}  # after: the engine's default estimator
    kv = {"kv_mode": "blend", "blend_recompute": blend} if blend is not None else {}
    recording = RecordingEngine(explainer.engine)
    result = Explainer(recording).explain(question=prompt.question, documents=prompt.documents, target=target, budget=budget, seed=0,
                                          adaptive=after, **method, **kv)
    return result, trie_tokens(recording.scored)


def greedy_answer(explainer: Explainer, prompt: NQPrompt) -> str:
    """The full prompt's greedy answer, computed once and given to every run as its target."""
    qa = QAPrompt(prompt.question, [Document(d["text"], d["title"]) for d in prompt.documents])
    view = explainer.model_view()
    full = qa.render(FeatureTree(qa.documents, view.token_offsets))
    return view.decode(view.greedy([full], 20)[0])


def main() -> None:
    cli = parser(__doc__.splitlines()[0])
    cli.add_argument("--passages", type=int, nargs="+", default=list(PASSAGES), help="passage counts to run (default 10 20 40)")
    cli.add_argument("--runs", nargs="+", choices=RUNS, default=list(RUNS), help="which runs to make (default all)")
    cli.add_argument("--kv-mode", nargs="+", choices=KV_MODES, default=["exact"], help="exact, and blend for blended after runs (default exact)")
    cli.add_argument("--blend-recompute", type=float, nargs="+", default=[OPTIONS["blend_recompute"].default],
                     help="recompute shares of the blended runs (default: the option's default)")
    args = cli.parse_args()
    blended = {f"{after}-blend-{share:g}": (after, share) for after in ("after", "after-bf16") if after in args.runs and "blend" in args.kv_mode
               for share in args.blend_recompute}
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    # Every run but after-bf16 uses the float32 model; before also plain SDPA and no prefix states kept between batches.
    before = Explainer.from_pretrained(args.model, engine_options={"prefix_cache_bytes": 0}, attn_implementation="sdpa") if "before" in args.runs else explainer
    bf16 = Explainer.from_pretrained(args.model, engine="transformers", dtype="bfloat16") if "after-bf16" in args.runs else None
    nq = load_nq()
    table, figures = [], {}
    for passages in args.passages:
        prompt = nq_prompt(nq, NQ_ROW, passages - 1, seed=0)
        budget = 4 * (passages + 1) if args.quick else None
        target = greedy_answer(explainer, prompt)
        n_words = sum(len(d["text"].split()) for d in prompt.documents)
        rows: dict[str, tuple[dict, float, tuple[str, ...] | None]] = {}
        documents: dict[str, dict[str, float]] = {}
        for name in ("before", "after", "after-bf16", *blended):
            if name in args.runs or name in blended:
                exact_name, share = blended.get(name, (name, None))
                runner = {"before": before, "after": explainer, "after-bf16": bf16}[exact_name]
                assert runner is not None, "after-bf16 runs load a bfloat16 model"
                result, ideal = explain(runner, prompt, target, budget, name != "before", share)
                documents[name] = {f.id: f.value for f in result.levels[0].features}
                unsettled = "/".join(str(len(level.unsettled)) for level in result.levels) if name != "before" else "—"
                top, (forwarded, total) = top_ids(result), tokens(result.stats)
                check = _check_cell(result.self_check)
                rows[name] = ({**result.stats, "ideal_tokens": ideal, "unsettled": unsettled, "check": check}, result.stats["wall_seconds"], top)
                # A run can take an hour at 40 passages: report it before the next one starts.
                print(f"{passages} passages, {name}: {result.stats['coalitions']} evaluations, {forwarded} forwarded of "
                      f"{total} tokens, {result.stats['wall_seconds']:.0f} s, top {'/'.join(top)}", flush=True)
        if "flat" in args.runs:
            flat_stats, flat_seconds = flat_costed(explainer, prompt, target, PERMUTATIONS * (n_words + 1), TIMED_BATCHES, seed=0)
            rows["flat"] = (flat_stats, flat_seconds, None)
        before_seconds = rows["before"][1] if "before" in rows else None
        for name, (stats, seconds, top) in rows.items():
            forwarded, total = tokens(stats)
            exact_name = blended[name][0] if name in blended else None
            rho = spearman(documents[exact_name], documents[name]) if exact_name in documents else "—"
            if exact_name in rows:
                figures[f"p{passages}_{name}_spearman"] = rho
                figures[f"p{passages}_{name}_speedup_vs_exact"] = rows[exact_name][1] / seconds
                figures[f"p{passages}_{name}_same_top"] = rows[exact_name][2] == top
            table.append([
                passages, target, name, stats["coalitions"], forwarded, total, forwarded / total,
                stats["ideal_tokens"] / total if "ideal_tokens" in stats else "—", seconds,
                before_seconds / seconds if before_seconds else "not run", "extrapolated" if name == "flat" else "measured",
                "/".join(top) if top else "—", stats.get("unsettled", "—"), stats.get("check") or "—", rho,
                rows[exact_name][1] / seconds if exact_name in rows else "—",
            ])
            figures[f"p{passages}_{name}_forward_tokens"] = forwarded
            figures[f"p{passages}_{name}_total_tokens"] = total
            figures[f"p{passages}_{name}_seconds"] = seconds
            figures[f"p{passages}_{name}_evaluations"] = stats["coalitions"]
            if "ideal_tokens" in stats:
                figures[f"p{passages}_{name}_ideal_tokens"] = stats["ideal_tokens"]
            if top:
                figures[f"p{passages}_{name}_top"] = "/".join(top)
        for after in ("after", "after-bf16"):
            if "before" in rows and after in rows:
                figures[f"p{passages}_{after}_speedup"] = rows["before"][1] / rows[after][1]
                figures[f"p{passages}_{after}_same_top"] = rows["before"][2] == rows[after][2]
        if "after" in documents and "after-bf16" in documents:
            # bfloat16 changes the game a little: how much, against the float32 run's largest document value.
            shift = max(abs(documents["after-bf16"][d] - value) for d, value in documents["after"].items())
            figures[f"p{passages}_bf16_document_shift"] = shift
            figures[f"p{passages}_bf16_document_shift_of_top"] = shift / max(abs(v) for v in documents["after"].values())
            print(f"{passages} passages: bfloat16 moved document values by at most {shift:.3f} "
                  f"({figures[f'p{passages}_bf16_document_shift_of_top']:.1%} of the largest float32 value)", flush=True)
        _print(table, args.quick, explainer.engine.loaded.name)
    write_json(args.json, {**figures, "quick": args.quick, "nq_row": NQ_ROW})


def _check_cell(check: dict | None) -> str | None:
    """A blended run's self-check as a table cell: largest / mean relative difference, and whether it fell back."""
    if check is None:
        return None
    cell = "/".join("unknown" if check[k] is None or check[k] != check[k] else f"{check[k]:.3f}" for k in ("max_difference", "mean_difference"))
    return f"{cell} (fell back)" if check["fallback"] else cell


def _print(table: list, quick: bool, model: str) -> None:
    """The table so far: printed after every prompt size, so a run cut short still reports what it measured."""
    print_table(
        ["passages", "answer", "run", "evaluations", "forwarded tok", "total tok", "forwarded share", "prefix-tree share", "wall s", "speedup vs before",
         "time", "top doc/sentence/word", "unsettled per level", "blend check max/mean", "doc Spearman vs exact", "speed vs exact"],
        table,
        f"Long-context NQ (row {NQ_ROW}), document→sentence→word, {'quick budgets 4(n+1)/level' if quick else 'default budgets'}, "
        f"{model}; before = permutation, no prefix cache, fixed budgets, plain SDPA; after = auto, prefix cache, adaptive allocation, "
        "block-bounded SDPA; float32 but after-bf16; RUN-blend-S = RUN with kv_mode blend recomputing a share S of each document",
    )
    print(flush=True)


if __name__ == "__main__":
    main()
