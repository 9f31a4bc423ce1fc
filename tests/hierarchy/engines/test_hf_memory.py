"""Out-of-memory back-off: big batches are split and retried, never dropped or wrong; the back-off lasts one call."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longshap.hierarchy.engines import hf_scoring
from longshap.hierarchy.engines.hf_engine import DEFAULT_MAX_BATCH_TOKENS, TransformersEngine
from longshap.hierarchy.models import load_model
from longshap.hierarchy.speculative import AnswerTree
from tiny_models import model_view

PROMPTS = [f"Document: The quick brown fox number {i} jumps over the lazy dog.\nAnswer:" for i in range(12)]


def flaky_when_big(engine: TransformersEngine, max_rows: int) -> list[int]:
    """Make every forward pass with more than `max_rows` rows raise OutOfMemoryError, as a GPU would."""
    seen: list[int] = []

    def check(_module, args, kwargs):
        rows = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[0]
        seen.append(rows)
        if rows > max_rows:
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")

    engine.backbone.register_forward_pre_hook(check, with_kwargs=True)
    return seen


def test_batches_back_off_and_give_the_same_results(tiny_llama_dir):
    loaded = load_model(str(tiny_llama_dir))
    reference = model_view(loaded)
    expected_scores = reference.continuation_logprobs(PROMPTS, [[5, 6], [7]])
    expected_answers = reference.greedy(PROMPTS, 4)

    view = model_view(load_model(str(tiny_llama_dir)), max_batch_tokens=10**6)
    seen = flaky_when_big(view.engine, max_rows=3)
    np.testing.assert_allclose(view.continuation_logprobs(PROMPTS, [[5, 6], [7]]), expected_scores, atol=1e-4)
    assert view.engine.max_batch_tokens == 10**6  # the back-off belonged to that call: the engine's budget is unchanged
    assert max(seen) > 3 and seen[-1] <= 3
    tree = AnswerTree()
    tree.add(expected_answers[0])
    seen.clear()
    assert view.greedy(PROMPTS, 4, tree=tree) == expected_answers
    assert max(seen) > 3  # the next call started from the engine's budget again, and backed off again


def test_a_single_row_that_does_not_fit_raises(tiny_llama_dir):
    view = model_view(load_model(str(tiny_llama_dir)))
    flaky_when_big(view.engine, max_rows=0)
    with pytest.raises(torch.OutOfMemoryError):
        view.continuation_logprobs(PROMPTS[:2], [[5]])


def test_recovery_is_per_call(tiny_llama_dir, monkeypatch):
    """The first batch runs out of memory once: the call still returns the right values, and the engine keeps its budget."""
    loaded = load_model(str(tiny_llama_dir))
    expected = model_view(loaded).continuation_logprobs(PROMPTS, [[5, 6], [7]])
    view = model_view(loaded)
    batches: list[int] = []
    failures = [torch.OutOfMemoryError("simulated: CUDA out of memory")]
    original = hf_scoring.last_logprobs

    def first_batch_fails_once(engine, rows, keep, context):
        batches.append(len(rows))
        if failures:
            raise failures.pop()
        return original(engine, rows, keep, context)

    monkeypatch.setattr(hf_scoring, "last_logprobs", first_batch_fails_once)
    np.testing.assert_allclose(view.continuation_logprobs(PROMPTS, [[5, 6], [7]]), expected, atol=1e-4)
    assert not failures and batches[0] > 1 and max(batches[1:]) < batches[0]  # the failed batch was split and retried
    assert view.engine.max_batch_tokens == DEFAULT_MAX_BATCH_TOKENS
    first_call = list(batches)
    batches.clear()
    np.testing.assert_allclose(view.continuation_logprobs(PROMPTS, [[5, 6], [7]]), expected, atol=1e-4)
    assert batches[0] == first_call[0]  # the next call plans with the engine's whole budget again
