"""Answer-distribution explanations with and without tree verification (and a draft model).

Run from the repository root: `python -m bench.speculative [--quick] [--json PATH] [--draft DIR]`.
The same explanation (value "answers", TextGenSHAP's setting) runs with plain greedy
decoding of every coalition, then with the answer tree verified in one pass per batch,
then (with --draft) with a draft model proposing tokens where decoding is needed. The
answers and values must be identical; the table reports decoding steps, how many
coalitions the tree answered without decoding, and the time ratio.
"""
from __future__ import annotations

import time

from bench.common import parser, print_table, write_json
from longshap.hierarchy import Explainer
from longshap.hierarchy.engines import TransformersEngine
from longshap.client.data import load_nq, nq_prompt
from longshap.hierarchy.models import load_model


def run(explainer: Explainer, prompt, budget: int, speculative: bool):
    started = time.perf_counter()
    result = explainer.explain(
        question=prompt.question, documents=prompt.documents, value="answers", levels=("document", "sentence"),
        budget=budget, seed=0, speculative=speculative, max_new_tokens=10,
    )
    return result, time.perf_counter() - started


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--draft", default=None, help="draft model directory (same tokenizer); 'self' drafts with the model itself")
    args = p.parse_args()
    rows, budget, distractors = ([5], 24, 3) if args.quick else ([5, 3, 11], 60, 3)
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    loaded = explainer.engine.loaded
    modes = [("plain", False, explainer), ("tree", True, explainer)]
    if args.draft:
        draft = loaded if args.draft == "self" else load_model(args.draft)
        modes.append(("tree+draft", True, Explainer(TransformersEngine(loaded, draft=draft))))
    nq = load_nq()
    table, figures = [], {}
    totals = {name: 0.0 for name, _, _ in modes}
    same = True
    for row in rows:
        prompt = nq_prompt(nq, row, distractors, seed=0)
        reference = None
        for name, speculative, runner in modes:
            result, seconds = run(runner, prompt, budget, speculative)
            stats = result.stats
            values = [f.values_by_answer for level in result.levels for f in level.features]
            if reference is None:
                reference = (result.answers, values)
            same &= (result.answers, values) == reference
            totals[name] += seconds
            accepted = stats["tree_accepted"] / stats["tree_checks"] if stats["tree_checks"] else 0.0
            per_pass = stats["draft_tokens"] / stats["draft_target_passes"] if stats["draft_target_passes"] else 0.0
            table.append([row, name, stats["coalitions"], len(result.answers), stats["decode_steps"], accepted, per_pass, seconds])
    print_table(
        ["NQ row", "decoding", "coalitions", "answers", "decode steps", "tree acceptance", "draft tokens/target pass", "seconds"],
        table,
        f"answer-distribution explanations, {distractors + 1} passages, budget {budget}/level, {loaded.name}",
    )
    speedup = totals["plain"] / totals["tree"]
    print(f"\ntree verification: {speedup:.2f}× faster; identical answers and values: {same}")
    figures.update({"speedup": speedup, "identical": same, "budget": budget})
    if "tree+draft" in totals:
        figures["speedup_draft"] = totals["plain"] / totals["tree+draft"]
        print(f"tree + draft: {figures['speedup_draft']:.2f}× faster than plain")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
