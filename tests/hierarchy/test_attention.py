"""Block-bounded SDPA against plain SDPA: same outputs, fewer keys per query block."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longshap.hierarchy import attention
from longshap.hierarchy.attention import key_span
from longshap.hierarchy.models import load_model
from longshap.hierarchy.speculative import AnswerTree
from tiny_models import model_view

LONG_DOC = "Document (Title: Paris): Paris is the capital of France. It is on the Seine. " * 4
PROMPTS = [
    "Answer the question using the documents.\n\n" + LONG_DOC + "\n\nQuestion: What is the capital of France?\nAnswer:",
    "Answer the question using the documents.\n\n" + LONG_DOC.replace(" It is on the Seine.", "") + "\n\nQuestion: Where is Paris?\nAnswer:",
    "Answer the question using the documents.\n\nQuestion: What is the capital of France?\nAnswer:",
    "Paris is",
]


def test_key_span_of_boolean_and_additive_masks():
    allowed = torch.zeros(2, 1, 3, 10, dtype=torch.bool)
    allowed[0, 0, 1, 4:6] = True
    allowed[1, 0, 2, 7] = True
    assert key_span(allowed) == (4, 8)  # the union over rows and queries
    additive = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    assert key_span(additive) == (4, 8)
    assert key_span(torch.zeros(1, 1, 3, 10, dtype=torch.bool)) == (0, 10)  # nothing visible: every key, as SDPA would


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def models(request):
    """The same tiny model with plain and with block-bounded SDPA (Gemma 3's sliding window is 16 tokens)."""
    directory = str(request.getfixturevalue("tiny_llama_dir" if request.param == "llama" else "tiny_gemma_dir"))
    return load_model(directory, device="cpu", attn_implementation="sdpa"), load_model(directory, device="cpu", attn_implementation="sdpa_blocked")


@pytest.fixture
def key_lengths(monkeypatch):
    """Blocks of 4 queries, so the tiny prompts make many; records how many keys each block attended to."""
    monkeypatch.setattr(attention, "QUERY_BLOCK", 4)
    seen: list[tuple[int, int]] = []
    plain = attention.sdpa_attention_forward

    def recording(module, query, key, *args, **kwargs):
        seen.append((query.shape[2], key.shape[2]))
        return plain(module, query, key, *args, **kwargs)

    monkeypatch.setattr(attention, "sdpa_attention_forward", recording)
    return seen


def test_padded_batch_logits_equal_plain_sdpa(models, key_lengths):
    plain, blocked = models
    batch = plain.tokenizer(PROMPTS, padding=True, return_tensors="pt")
    assert batch["attention_mask"].min() == 0  # left-padded rows of different lengths
    with torch.inference_mode():
        expected = plain.model(**batch).logits
        actual = blocked.model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(actual[real], expected[real], atol=1e-5, rtol=1e-5)
    width = batch["input_ids"].shape[1]
    assert any(keys < width for _, keys in key_lengths)  # blocks really skipped the keys their mask hides


def test_engine_values_and_greedy_answers_equal_plain_sdpa(models, key_lengths):
    """Shared-prefix caches, right-padded suffixes and answer-tree masks all go through the blocks."""
    plain, blocked = (model_view(loaded) for loaded in models)
    continuation = plain.continuation_ids(PROMPTS[0], " Paris is the capital")
    np.testing.assert_allclose(
        blocked.continuation_logprobs(PROMPTS, [continuation]), plain.continuation_logprobs(PROMPTS, [continuation]), atol=1e-5, rtol=0
    )
    answers = plain.greedy(PROMPTS, 5)
    assert blocked.greedy(PROMPTS, 5) == answers
    tree = AnswerTree()
    for answer in answers:
        tree.add(answer[:2] + [7, 8])  # right start, then a turn the rows leave
    assert blocked.engine.tree_capable and blocked.greedy(PROMPTS, 5, tree=tree) == answers
    assert blocked.stats.tree_checks == len(PROMPTS)
    assert any(queries <= 4 for queries, _ in key_lengths)


def test_a_long_unmasked_causal_pass_runs_in_blocks_with_the_same_outputs(models):
    """One row with no mask used to be one SDPA call: uninterruptible however long the prompt."""
    plain, blocked = models
    ids = torch.randint(3, 60, (1, attention.CAUSAL_BLOCKS_FROM + 77))
    with torch.no_grad():
        expected = plain.model(input_ids=ids).logits
        got = blocked.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-4)


def test_the_checkpoint_runs_before_every_block_and_can_stop_the_pass(models, monkeypatch):
    _, blocked = models
    calls = []

    class Stop(Exception):
        pass

    def checkpoint():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    monkeypatch.setattr(attention, "_checkpoint", checkpoint)
    ids = torch.randint(3, 60, (1, attention.CAUSAL_BLOCKS_FROM + 77))
    with pytest.raises(Stop), torch.no_grad():
        blocked.model(input_ids=ids)
    assert len(calls) == 3  # stopped inside the first layer's attention, three blocks in
