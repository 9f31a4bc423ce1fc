"""Attention kernels on long prompts: plain SDPA vs block-bounded SDPA (`hierarchy.attention`), same rows.

Run from the repository root: `python -m bench.attention [--quick] [--json PATH]`.

- Rows: NQ row 5's question with its gold passage among 9 distractors (as in
  `bench.long_context`), the full prompt and the prompts without document i, for
  i = 0..14 (quick: 0..7) cycling over the 10 documents, scored for the full
  prompt's greedy answer by a view's `continuation_logprobs`: padded batches under the
  engine's token budget, each sharing its common prefix, as an explanation's
  document level scores them. Everything after the first dropped document is
  forwarded, so these are long sliding-window passes.
- Each kernel on float32 and on bfloat16 weights; seconds are the best of two runs
  after a warm-up call. "max |Δ|" is the largest difference from plain SDPA's
  log-probabilities on the same weights: the blocks skip only masked-out keys, so it is
  float rounding.
"""
from __future__ import annotations

import time

import numpy as np

from bench.common import parser, print_table, write_json
from bench.long_context import NQ_ROW, greedy_answer
from longshap.client.data import load_nq, nq_prompt
from longshap.hierarchy import Explainer
from longshap.hierarchy.prompt import QAPrompt
from longshap.hierarchy.segmentation import ROOT, Document, FeatureTree

KERNELS = ("sdpa", "sdpa_blocked")
DTYPES = ("float32", "bfloat16")
TIMED_RUNS = 2


def coalition_prompts(explainer: Explainer, rows: int) -> tuple[list[str], str]:
    """The full 10-passage prompt and prompts each dropping one document; and the full prompt's greedy answer.

    Computed once, on the first (float32, plain SDPA) model, so every kernel and dtype scores the same continuation."""
    prompt = nq_prompt(load_nq(), NQ_ROW, 9, seed=0)
    qa = QAPrompt(prompt.question, [Document(d["text"], d["title"]) for d in prompt.documents])
    tree = FeatureTree(qa.documents, explainer.model_view().token_offsets)
    documents = tree.expand(ROOT, "document")
    prompts = [qa.render(tree)] + [qa.render(tree, {documents[i % len(documents)]}) for i in range(rows - 1)]
    return prompts, greedy_answer(explainer, prompt)


def timed(explainer: Explainer, prompts: list[str], continuation: list[int]) -> tuple[float, np.ndarray, int]:
    """Best wall seconds of TIMED_RUNS scorings of every prompt, their log-probabilities, and the tokens forwarded per run."""
    explainer.model_view().continuation_logprobs(prompts[:2], [continuation])
    best, values = float("inf"), np.empty(0)
    for _ in range(TIMED_RUNS):
        view = explainer.model_view()  # each run computes its own prefixes: runs are alike, the first is not favoured
        started = time.perf_counter()
        values = view.continuation_logprobs(prompts, [continuation])
        best = min(best, time.perf_counter() - started)
        forwarded = view.stats.forward_tokens
    return best, values, forwarded


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    table, figures = [], {}
    prompts: list[str] = []
    continuation: list[int] = []
    for dtype in DTYPES:
        results = {}
        for kernel in KERNELS:
            # No prefix states kept between batches, as each batch's own prefix is the kernel's work to time.
            explainer = Explainer.from_pretrained(args.model, engine_options={"prefix_cache_bytes": 0}, dtype=dtype, attn_implementation=kernel)
            if not prompts:
                prompts, answer = coalition_prompts(explainer, 8 if args.quick else 16)
                continuation = explainer.model_view().continuation_ids(prompts[0], answer)
            results[kernel] = timed(explainer, prompts, continuation)
            del explainer
        plain_seconds, plain_values, _ = results["sdpa"]
        for kernel, (seconds, values, forwarded) in results.items():
            difference = float(np.max(np.abs(values - plain_values)))
            table.append([dtype, kernel, len(prompts), forwarded, seconds, forwarded / seconds, plain_seconds / seconds, difference])
            figures[f"{dtype}_{kernel}_seconds"] = seconds
            figures[f"{dtype}_{kernel}_max_difference"] = difference
            figures[f"{dtype}_{kernel}_forward_tokens"] = forwarded
    print_table(
        ["dtype", "attention", "prompts", "forwarded tok", "best s", "tok/s", "speedup vs sdpa", "max |Δ| logprob"],
        table,
        "Attention kernels, 10-passage NQ coalitions (full prompt, then one document dropped), Gemma 3 270M",
    )
    write_json(args.json, {**figures, "quick": args.quick})


if __name__ == "__main__":
    main()
