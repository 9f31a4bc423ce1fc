"""The batched scorer against independent references, on tiny Llama and Gemma 3 models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longshap.hierarchy.models import load_model
from longshap.hierarchy.scorer import ModelScorer
from longshap.hierarchy.errors import Cancelled

PROMPTS = [
    "Paris",
    "Question: What is the capital of France?\nAnswer:",
    "Answer the question using the documents. Answer with a short phrase.\n\n"
    + "Document (Title: Paris): Paris is the capital of France. It is on the Seine. " * 6
    + "\n\nQuestion: What is the capital of France?\nAnswer:",
    "Classify the text as one of: negative, positive.\n\nText: a charming and often affecting journey\nLabel:",
]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def loaded(request):
    directory = request.getfixturevalue("tiny_llama_dir" if request.param == "llama" else "tiny_gemma_dir")
    return load_model(str(directory), device="cpu")


@pytest.fixture
def scorer(loaded):
    return ModelScorer(loaded)


def reference_logprob(loaded, prompt: str, continuation: list[int]) -> float:
    """Sum of per-token log-probs from one plain, unpadded full forward pass."""
    ids = loaded.tokenizer(prompt)["input_ids"] + list(continuation)
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(ids) - len(continuation)
    return float(sum(logprobs[start - 1 + i, token] for i, token in enumerate(continuation)))


def continuations(scorer) -> tuple[list[list[int]], list[list[int]]]:
    single = [scorer.tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" Paris", "a", ".", " positive")]
    single = [ids[:1] for ids in single]
    multi = [scorer.continuation_ids(PROMPTS[1], text) for text in (" Paris", " the capital of France", " a charming journey")]
    assert all(len(c) == 1 for c in single) and max(len(c) for c in multi) > 3
    return single, multi


def test_prompt_lengths_differ_a_lot(scorer):
    lengths = [len(scorer.encode_prompt(p)) for p in PROMPTS]
    assert max(lengths) > 10 * min(lengths) and max(lengths) > 100  # beyond Gemma's sliding window of 16


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_batched_equals_one_by_one_and_reference(loaded, kind):
    scorer = ModelScorer(loaded)
    single, multi = continuations(scorer)
    conts = single if kind == "single" else multi
    batched = scorer.continuation_logprobs(PROMPTS, conts)
    assert batched.shape == (len(PROMPTS), len(conts))
    one_by_one = np.array([[scorer.continuation_logprobs([p], [c])[0, 0] for c in conts] for p in PROMPTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4, rtol=0)
    # A tight token budget splits the same work into many small batches: same values.
    small = ModelScorer(loaded, max_batch_tokens=64, max_batch_size=2)
    np.testing.assert_allclose(small.continuation_logprobs(PROMPTS, conts), batched, atol=1e-4, rtol=0)
    rows = len(PROMPTS) if kind == "single" else len(PROMPTS) * len(conts)
    assert small.stats.forward_passes >= rows / 2  # really split into batches of at most two rows
    reference = np.array([[reference_logprob(loaded, p, c) for c in conts] for p in PROMPTS])
    np.testing.assert_allclose(batched, reference, atol=1e-4, rtol=0)
    assert np.all(batched <= 0)
    # Different continuations get different values (the columns are not mixed up).
    assert np.ptp(batched[2]) > 1e-3


def test_multi_token_logprob_is_sum_of_token_logprobs(scorer):
    _, multi = continuations(scorer)
    tokens = multi[1]
    total = scorer.continuation_logprobs([PROMPTS[2]], [tokens])[0, 0]
    ids = scorer.encode_prompt(PROMPTS[2])
    stepwise = 0.0
    for token in tokens:  # chain rule, one single-token query per step
        stepwise += _next_token_logprob(scorer.loaded, ids, token)
        ids = ids + [token]
    assert total == pytest.approx(stepwise, abs=1e-4)


def _next_token_logprob(loaded, ids, token) -> float:
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    return float(torch.log_softmax(logits, dim=-1)[token])


def test_continuation_ids_follow_joint_tokenisation(scorer):
    prompt = "Question: What is the capital of France?\nAnswer:"
    ids = scorer.continuation_ids(prompt, " Paris")
    assert scorer.encode_prompt(prompt) + ids == scorer.encode_prompt(prompt + " Paris")
    with pytest.raises(ValueError, match="at least one token"):
        scorer.continuation_logprobs([prompt], [[]])
    with pytest.raises(ValueError, match="at least one token"):
        scorer.continuation_logprobs([prompt], [])


def test_stats_count_evaluations_and_forwarded_tokens(loaded):
    scorer = ModelScorer(loaded)
    single, multi = continuations(scorer)
    lengths = [len(scorer.encode_prompt(p)) for p in PROMPTS]
    scorer.continuation_logprobs(PROMPTS, single)
    assert scorer.stats.evaluations == len(PROMPTS)
    # One row per prompt; padding not counted; these prompts share no prefix worth caching.
    assert scorer.stats.reused_tokens == 0
    assert scorer.stats.forward_tokens == sum(lengths)
    scorer.continuation_logprobs(PROMPTS[:2], multi)
    assert scorer.stats.evaluations == len(PROMPTS) + 2
    tokens = sum(lengths) + sum(lengths[p] + len(c) for p in range(2) for c in multi)
    assert scorer.stats.forward_tokens + scorer.stats.reused_tokens == tokens
    assert scorer.stats.forward_passes >= 2 and scorer.stats.decode_steps == 0
    assert scorer.stats.as_dict()["evaluations"] == len(PROMPTS) + 2


@pytest.mark.parametrize("cache_bytes", [0, 2**20])
def test_rows_of_very_different_lengths_do_not_pad_each_other(loaded, cache_bytes):
    """Pads cost a pass what tokens do: a row 300 tokens longer than its batch starts its own, with or without the cache."""
    scorer = ModelScorer(loaded, prefix_cache_bytes=cache_bytes)
    prefix = list(range(10, 110))
    similar = [prefix + [5] * 10, prefix + [6] * 12, prefix + [7] * 11]
    batches = scorer._batches([*similar, prefix + [8] * 300])
    assert sorted(sorted(batch) for batch in batches) == [[0, 1, 2], [3]]


def reference_greedy(scorer, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([scorer.encode_prompt(prompt)])
    with torch.no_grad():
        out = scorer.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=scorer.pad_id,
        )
    generated = out[0, ids.shape[1] :].tolist()
    for i, token in enumerate(generated):
        if token in scorer.stop_ids:
            return generated[:i]
    return generated


def test_greedy_matches_generate_batched(loaded):
    scorer = ModelScorer(loaded)
    expected = [reference_greedy(scorer, p, 12) for p in PROMPTS]
    assert scorer.greedy(PROMPTS, max_new_tokens=12) == expected
    assert any(len(e) > 0 for e in expected)
    assert scorer.stats.evaluations == len(PROMPTS) and scorer.stats.decode_steps > 0
    assert scorer.stats.forward_tokens >= sum(len(scorer.encode_prompt(p)) for p in PROMPTS)


def test_greedy_stops_at_stop_tokens(loaded):
    scorer = ModelScorer(loaded)
    free = [reference_greedy(scorer, p, 8) for p in PROMPTS]
    # Declare the third generated token of the longest answer a stop token: that answer is cut before it.
    row = max(range(len(PROMPTS)), key=lambda i: len(free[i]))
    assert len(free[row]) >= 3
    stop = free[row][2]
    scorer.stop_ids = scorer.stop_ids | {stop}
    got = scorer.greedy(PROMPTS, max_new_tokens=8)
    for answer, reference in zip(got, free):
        cut = reference.index(stop) if stop in reference else len(reference)
        assert answer == reference[:cut]
    assert got[row] == free[row][: free[row].index(stop)]
    assert all(stop not in answer for answer in got)


def test_stop_ids_hold_eos_and_newlines(scorer):
    assert scorer.tokenizer.eos_token_id in scorer.stop_ids
    newline = scorer.tokenizer("a\nb", add_special_tokens=False)["input_ids"]
    assert any(t in scorer.stop_ids for t in newline)
    plain = scorer.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert not any(t in scorer.stop_ids for t in plain)
    assert scorer.decode(scorer.tokenizer(" Paris is", add_special_tokens=False)["input_ids"]) == "Paris is"


def test_should_stop_cancels_before_a_decoder_layer(loaded):
    scorer = ModelScorer(loaded)
    calls = []

    def stop_at_second_layer() -> bool:
        calls.append(1)
        return len(calls) >= 2

    try:
        scorer.should_stop = stop_at_second_layer
        with pytest.raises(Cancelled):
            scorer.continuation_logprobs(PROMPTS, [[5]])
        assert len(calls) == 2  # polled before each layer: stopped inside the first forward pass
        calls.clear()
        scorer.should_stop = lambda: True
        with pytest.raises(Cancelled):
            scorer.greedy(PROMPTS[:1], max_new_tokens=3)
    finally:
        scorer.should_stop = None
    assert scorer.continuation_logprobs(PROMPTS[:1], [[5]]).shape == (1, 1)


# ---- coalitions of one request: long shared prefixes ------------------------------
LONG_DOC = "Document (Title: Paris): Paris is the capital of France. It is on the Seine. Dr. Smith lives in the U.S. now."
COALITIONS = [
    "Answer the question using the documents.\n\n" + LONG_DOC + "\n\nQuestion: What is the capital of France?\nAnswer:",
    "Answer the question using the documents.\n\n" + LONG_DOC.replace(" It is on the Seine.", "") + "\n\nQuestion: What is the capital of France?\nAnswer:",
    "Answer the question using the documents.\n\n" + LONG_DOC.replace("Paris is the capital of France. ", "") + "\n\nQuestion: What is the capital of France?\nAnswer:",
    "Answer the question using the documents.\n\nQuestion: What is the capital of France?\nAnswer:",
]


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_shared_prefix_rows_match_reference(loaded, kind):
    scorer = ModelScorer(loaded)
    single, multi = continuations(scorer)
    conts = single if kind == "single" else multi
    values = scorer.continuation_logprobs(COALITIONS, conts)
    reference = np.array([[reference_logprob(loaded, p, c) for c in conts] for p in COALITIONS])
    np.testing.assert_allclose(values, reference, atol=1e-4, rtol=0)
    rows = [scorer.encode_prompt(p) + (list(c) if kind == "multi" else []) for p in COALITIONS for c in (conts if kind == "multi" else [None])]
    # Every non-pad token is either forwarded or read from a shared prefix cache, never dropped or double counted.
    assert scorer.stats.forward_tokens + scorer.stats.reused_tokens == sum(len(r) for r in rows)
    assert scorer.stats.reused_tokens > 0  # the shared instruction really was computed once
    assert scorer.stats.forward_tokens < sum(len(r) for r in rows)
    plain = ModelScorer(loaded, reuse_prefix=False)
    np.testing.assert_allclose(plain.continuation_logprobs(COALITIONS, conts), values, atol=1e-4, rtol=0)


def test_rows_of_separate_prefill_batches_decode_together(loaded):
    """Prefill batches follow shared prefixes; decoding, bound by weight reads on a CPU, merges them."""
    scorer = ModelScorer(loaded, max_batch_tokens=256)
    prompts = COALITIONS + PROMPTS
    expected = [reference_greedy(scorer, p, 6) for p in prompts]
    passes = {"prefill": 0, "decode": 0}
    for name, method in (("prefill", "_verify_batch"), ("decode", "_decode_states")):
        original = getattr(scorer, method)
        setattr(scorer, method, lambda *args, _name=name, _original=original, **kwargs: passes.__setitem__(_name, passes[_name] + 1) or _original(*args, **kwargs))
    assert scorer.greedy(prompts, max_new_tokens=6) == expected
    assert passes["prefill"] > 2 and 0 < passes["decode"] < passes["prefill"]


def test_greedy_with_shared_prefixes_matches_generate(loaded):
    scorer = ModelScorer(loaded)
    expected = [reference_greedy(scorer, p, 6) for p in COALITIONS]
    assert scorer.greedy(COALITIONS, max_new_tokens=6) == expected
    # Sliding-window models share too (prefilled right-padded with masks built from positions); the prompts exceed the window.
    assert scorer.stats.reused_tokens > 0
    assert len(scorer.encode_prompt(COALITIONS[0])) > (scorer.sliding_window or 0)
