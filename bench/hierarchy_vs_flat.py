"""Hierarchical document→sentence→word Shapley against flat word-level Shapley over every word of 10-passage NQ prompts.

Run from the repository root: `python -m bench.hierarchy_vs_flat [--quick] [--json PATH] [--model DIR]`.

- Same sampling on both sides: P = 2 permutations, i.e. one antithetic pair (a random
  order and its reverse), for every game. Hierarchical: `explain(question, documents,
  method="permutation", budget=B)` with B = P(n_docs + 1) per level, which buys exactly
  one pair for the document game; each lower-level game gets its share of B, less than
  a second pair costs, so it runs the one pair the estimator always runs.
- Flat (LongSHAP flat mode): `explain(..., levels=("word",), budget=P(n_words + 1))` with
  the hierarchical run's answer as target: every word of every passage is a player of
  one game, and that budget also buys exactly one pair (2·n_words evaluations).
- Figures: forwarded tokens (result.stats["forward_tokens"], KV prefix reuse on for both),
  wall time, token_ratio = flat / hierarchical, and the overlap of the top-5 words.

The flat game has ~900 players, so one pair is ~1,800 evaluations of ~1,400-token
prompts: hours on a CPU. With --quick it is not run in full but costed: the real flat
explanation runs on an engine that tokenises, batches and shares prefixes exactly as the
real one and counts every batch's forwarded tokens, but forwards nothing (the
permutation estimator's coalitions do not depend on the values, so the token count is
exact; its prefix cache across batches is simulated with storage-free tensors of the
real sizes, so it fills and evicts as in a real run); a seeded sample of its recorded
batches is then forwarded for real, and wall
time = seconds per forwarded token on that sample × the exact token count, labelled
"extrapolated". Such a run has no real values, so the top-5 overlap needs the full run.
"""
from __future__ import annotations

import random
import time
from types import SimpleNamespace
from typing import Sequence

import torch

from bench.common import parser, print_table, write_json
from longshap.hierarchy import Explainer
from longshap.client.data import NQPrompt, load_nq, nq_prompt
from longshap.hierarchy.results import Explanation, Feature
from longshap.hierarchy.engines import CacheScope, RunContext, TransformersEngine

DISTRACTORS = 9
PERMUTATIONS = 2
"""One antithetic pair per game, on both sides (see the module docstring)."""
TIMED_BATCHES = 4
"""Batches of the costed flat run forwarded for real to measure seconds per token (--quick)."""
TOP = 5


class CostingEngine(TransformersEngine):
    """The transformers engine's batching, prefix sharing and token accounting, without running the model.

    Every pass returns zeros of the real shapes and writes storage-free (meta) KV states
    of the real sizes, so prefix states fill and evict as in a real run and every counted
    token is exact; the values mean nothing. The batches it would have run are recorded.
    """

    def __init__(self, loaded, **options) -> None:
        super().__init__(loaded, **options)
        self.batches: list[tuple[list[list[int]], int]] = []
        """(token sequences, continuation length) of every batch."""
        self._continuation = 0

    def score_tokens(self, rows, context):
        self._continuation = max(len(continuation) for _, continuation in rows)
        return super().score_tokens(rows, context)

    def map_batches(self, rows, run, context, share=True, budget=None):
        def recorded(batch: list[int]):
            self.batches.append(([list(rows[i]) for i in batch], self._continuation))
            return run(batch)

        return super().map_batches(rows, recorded, context, share, budget)

    def run_backbone(self, cache, **inputs):
        config = self.model.config
        batch, length = inputs["input_ids"].shape
        if cache is not None:
            head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
            dtype = next(self.model.parameters()).dtype
            shape = (batch, config.num_key_value_heads, length, head_dim)
            for layer in range(config.num_hidden_layers):
                cache.update(torch.empty(shape, dtype=dtype, device="meta"), torch.empty(shape, dtype=dtype, device="meta"), layer)
        return SimpleNamespace(last_hidden_state=torch.zeros((batch, length, config.hidden_size)))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.zeros((*hidden.shape[:-1], self.head.weight.shape[0]))


def time_sample(engine: TransformersEngine, batches: Sequence[tuple[list[list[int]], int]], count: int, seed: int) -> tuple[float, int]:
    """Forward a seeded sample of recorded batches through the real engine: (seconds, forwarded tokens).

    Each batch computes its whole shared prefix (no states kept), counted as forwarded."""
    sample = random.Random(seed).sample(list(batches), min(count, len(batches)))
    context = RunContext(cache=CacheScope(enabled=False))
    started = time.perf_counter()
    for sequences, continuation in sample:
        engine.score_tokens([(row[:-continuation], row[-continuation:]) for row in sequences], context)
    return time.perf_counter() - started, context.stats.forward_tokens


def words(result: Explanation) -> list[Feature]:
    """The word-level features of an explanation (empty if the hierarchy stopped above words)."""
    return [f for level in result.levels if level.level == "word" for f in level.features]


def top_words(features: Sequence[Feature]) -> set[tuple[int, int]]:
    """The TOP highest-valued words as (document, character offset), comparable across id schemes."""
    return {(f.doc, f.start) for f in sorted(features, key=lambda f: -f.value)[:TOP]}


def flat_costed(explainer: Explainer, prompt: NQPrompt, target: str, budget: int, samples: int, seed: int) -> tuple[dict, float]:
    """The flat run's exact forwarded tokens and its wall time extrapolated from `samples` real batches."""
    engine = explainer.engine
    costing = CostingEngine(engine.loaded, max_batch_tokens=engine.max_batch_tokens)
    result = Explainer(costing).explain(question=prompt.question, documents=prompt.documents, target=target,
                                        levels=("word",), method="permutation", budget=budget, seed=seed)
    seconds, tokens = time_sample(engine, costing.batches, samples, seed)
    return result.stats, seconds / tokens * result.stats["forward_tokens"]


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    rows = [5] if args.quick else [5, 3, 11]
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    nq = load_nq()
    table, totals = [], {"hier_tokens": 0, "flat_tokens": 0, "hier_s": 0.0, "flat_s": 0.0}
    overlaps = []
    for row in rows:
        prompt = nq_prompt(nq, row, DISTRACTORS, seed=0)
        n_docs = len(prompt.documents)
        hier = explainer.explain(question=prompt.question, documents=prompt.documents, method="permutation",
                                 budget=PERMUTATIONS * (n_docs + 1), seed=0)
        n_words = sum(len(d["text"].split()) for d in prompt.documents)
        flat_budget = PERMUTATIONS * (n_words + 1)
        if args.quick:
            flat_stats, flat_seconds = flat_costed(explainer, prompt, hier.answer, flat_budget, TIMED_BATCHES, seed=0)
            overlap, how = "n/a", f"extrapolated from {TIMED_BATCHES} batches"
        else:
            flat = explainer.explain(question=prompt.question, documents=prompt.documents, target=hier.answer,
                                     levels=("word",), method="permutation", budget=flat_budget, seed=0)
            flat_stats, flat_seconds, how = flat.stats, flat.stats["wall_seconds"], "measured"
            overlap = len(top_words(words(hier)) & top_words(words(flat)))
            overlaps.append(overlap)
        hier_tokens, flat_tokens = hier.stats["forward_tokens"], flat_stats["forward_tokens"]
        table.append([
            row, hier.answer, n_words, len(words(hier)), hier.stats["coalitions"], flat_stats["coalitions"],
            hier_tokens, flat_tokens, flat_tokens / hier_tokens, hier.stats["wall_seconds"], flat_seconds, how, overlap,
        ])
        totals["hier_tokens"] += hier_tokens
        totals["flat_tokens"] += flat_tokens
        totals["hier_s"] += hier.stats["wall_seconds"]
        totals["flat_s"] += flat_seconds
    print_table(
        ["NQ row", "answer", "words", "words explained (hier)", "evals hier", "evals flat", "tokens hier", "tokens flat",
         "token ratio", "s hier", "s flat", "flat time", f"top-{TOP} overlap"],
        table,
        f"Hierarchical vs flat word-level permutation Shapley, {DISTRACTORS + 1} passages, {PERMUTATIONS} permutations "
        f"(one antithetic pair) per game, {explainer.engine.loaded.name}; flat tokens exact",
    )
    token_ratio = totals["flat_tokens"] / totals["hier_tokens"]
    write_json(args.json, {
        "token_ratio": token_ratio, "time_ratio": totals["flat_s"] / totals["hier_s"],
        "flat_time_extrapolated": args.quick, "flat_tokens_exact": True,
        "forward_tokens_hierarchical": totals["hier_tokens"], "forward_tokens_flat": totals["flat_tokens"],
        "seconds_hierarchical": totals["hier_s"], "seconds_flat": totals["flat_s"],
        "top5_overlap": sum(overlaps) / len(overlaps) if overlaps else None,
        "permutations": PERMUTATIONS, "passages": DISTRACTORS + 1, "prompts": len(rows),
    })


if __name__ == "__main__":
    main()
