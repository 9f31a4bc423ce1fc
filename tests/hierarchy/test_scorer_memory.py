"""Out-of-memory back-off: big batches are split and retried, never dropped or wrong."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longshap.hierarchy.models import load_model
from longshap.hierarchy.scorer import ModelScorer
from longshap.hierarchy.speculative import AnswerTree

PROMPTS = [f"Document: The quick brown fox number {i} jumps over the lazy dog.\nAnswer:" for i in range(12)]


def flaky_when_big(scorer: ModelScorer, max_rows: int) -> list[int]:
    """Make every forward pass with more than `max_rows` rows raise OutOfMemoryError, as a GPU would."""
    seen: list[int] = []

    def check(_module, args, kwargs):
        rows = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]
        seen.append(rows)
        if rows > max_rows:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")

    scorer.backbone.register_forward_pre_hook(check, with_kwargs=True)
    return seen


def test_batches_back_off_and_give_the_same_results(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir))
    reference = ModelScorer(loaded)
    expected_scores = reference.continuation_logprobs(PROMPTS, [[5, 6], [7]])
    expected_answers = reference.greedy(PROMPTS, 4)

    scorer = ModelScorer(load_model(str(tiny_llama_dir)), max_batch_tokens=10**6)
    seen = flaky_when_big(scorer, max_rows=3)
    np.testing.assert_allclose(scorer.continuation_logprobs(PROMPTS, [[5, 6], [7]]), expected_scores, atol=1e-4)
    assert scorer.max_batch_tokens < 10**6
    assert max(seen) > 3 and seen[-1] <= 3
    tree = AnswerTree()
    tree.add(expected_answers[0])
    assert scorer.greedy(PROMPTS, 4, tree=tree) == expected_answers


def test_a_single_row_that_does_not_fit_raises(tiny_llama_dir):
    scorer = ModelScorer(load_model(str(tiny_llama_dir)))
    flaky_when_big(scorer, max_rows=0)
    with pytest.raises(torch.OutOfMemoryError):
        scorer.continuation_logprobs(PROMPTS[:2], [[5]])
