"""The transformers engine, through a request's view, against independent references on tiny Llama and Gemma 3 models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from longshap.hierarchy.engines import ANSWER_TREE, DRAFT, GRADIENTS, PREFIX_REUSE, Engine, hf_decoding
from longshap.hierarchy.models import load_model
from tiny_models import model_view

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
def view(loaded):
    return model_view(loaded)


def reference_logprob(loaded, prompt: str, continuation: list[int]) -> float:
    """Sum of per-token log-probs from one plain, unpadded full forward pass."""
    ids = loaded.tokenizer(prompt)["input_ids"] + list(continuation)
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0].double()
    logprobs = torch.log_softmax(logits, dim=-1)
    start = len(ids) - len(continuation)
    return float(sum(logprobs[start - 1 + i, token] for i, token in enumerate(continuation)))


def continuations(view) -> tuple[list[list[int]], list[list[int]]]:
    single = [view.engine.tokenizer(w, add_special_tokens=False)["input_ids"] for w in (" Paris", "a", ".", " positive")]
    single = [ids[:1] for ids in single]
    multi = [view.continuation_ids(PROMPTS[1], text) for text in (" Paris", " the capital of France", " a charming journey")]
    assert all(len(c) == 1 for c in single) and max(len(c) for c in multi) > 3
    return single, multi


def test_prompt_lengths_differ_a_lot(view):
    lengths = [len(view.encode_prompt(p)) for p in PROMPTS]
    assert max(lengths) > 10 * min(lengths) and max(lengths) > 100  # beyond Gemma's sliding window of 16


@pytest.mark.parametrize("kind", ["single", "multi"])
def test_batched_equals_one_by_one_and_reference(loaded, kind):
    view = model_view(loaded)
    single, multi = continuations(view)
    conts = single if kind == "single" else multi
    batched = view.continuation_logprobs(PROMPTS, conts)
    assert batched.shape == (len(PROMPTS), len(conts))
    one_by_one = np.array([[view.continuation_logprobs([p], [c])[0, 0] for c in conts] for p in PROMPTS])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4, rtol=0)
    # A tight token budget splits the same work into many small batches: same values.
    small = model_view(loaded, max_batch_tokens=64, max_batch_size=2)
    np.testing.assert_allclose(small.continuation_logprobs(PROMPTS, conts), batched, atol=1e-4, rtol=0)
    rows = len(PROMPTS) if kind == "single" else len(PROMPTS) * len(conts)
    assert small.stats.forward_passes >= rows / 2  # really split into batches of at most two rows
    reference = np.array([[reference_logprob(loaded, p, c) for c in conts] for p in PROMPTS])
    np.testing.assert_allclose(batched, reference, atol=1e-4, rtol=0)
    assert np.all(batched <= 0)
    # Different continuations get different values (the columns are not mixed up).
    assert np.ptp(batched[2]) > 1e-3


def test_multi_token_logprob_is_sum_of_token_logprobs(loaded, view):
    _, multi = continuations(view)
    tokens = multi[1]
    total = view.continuation_logprobs([PROMPTS[2]], [tokens])[0, 0]
    ids = view.encode_prompt(PROMPTS[2])
    stepwise = 0.0
    for token in tokens:  # chain rule, one single-token query per step
        stepwise += _next_token_logprob(loaded, ids, token)
        ids = ids + [token]
    assert total == pytest.approx(stepwise, abs=1e-4)


def _next_token_logprob(loaded, ids, token) -> float:
    with torch.no_grad():
        logits = loaded.model(input_ids=torch.tensor([ids])).logits[0, -1].double()
    return float(torch.log_softmax(logits, dim=-1)[token])


def test_continuation_ids_follow_joint_tokenisation(view):
    prompt = "Question: What is the capital of France?\nAnswer:"
    ids = view.continuation_ids(prompt, " Paris")
    assert view.encode_prompt(prompt) + ids == view.encode_prompt(prompt + " Paris")
    with pytest.raises(ValueError, match="at least one token"):
        view.continuation_logprobs([prompt], [[]])
    with pytest.raises(ValueError, match="at least one token"):
        view.continuation_logprobs([prompt], [])


def test_stats_count_evaluations_and_forwarded_tokens(loaded):
    view = model_view(loaded)
    single, multi = continuations(view)
    lengths = [len(view.encode_prompt(p)) for p in PROMPTS]
    view.continuation_logprobs(PROMPTS, single)
    assert view.stats.evaluations == len(PROMPTS)
    # One row per prompt; padding not counted; these prompts share no prefix worth caching.
    assert view.stats.reused_tokens == 0
    assert view.stats.forward_tokens == sum(lengths)
    view.continuation_logprobs(PROMPTS[:2], multi)
    assert view.stats.evaluations == len(PROMPTS) + 2
    tokens = sum(lengths) + sum(lengths[p] + len(c) for p in range(2) for c in multi)
    assert view.stats.forward_tokens + view.stats.reused_tokens == tokens
    assert view.stats.forward_passes >= 2 and view.stats.decode_steps == 0
    assert view.stats.as_dict()["evaluations"] == len(PROMPTS) + 2


def reference_greedy(view, prompt: str, max_new_tokens: int) -> list[int]:
    ids = torch.tensor([view.encode_prompt(prompt)])
    with torch.no_grad():
        out = view.engine.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=view.engine.pad_id,
        )
    generated = out[0, ids.shape[1] :].tolist()
    for i, token in enumerate(generated):
        if token in view.engine.stop_ids:
            return generated[:i]
    return generated


def test_greedy_matches_generate_batched(loaded):
    view = model_view(loaded)
    expected = [reference_greedy(view, p, 12) for p in PROMPTS]
    assert view.greedy(PROMPTS, max_new_tokens=12) == expected
    assert any(len(e) > 0 for e in expected)
    assert view.stats.evaluations == len(PROMPTS) and view.stats.decode_steps > 0
    assert view.stats.forward_tokens >= sum(len(view.encode_prompt(p)) for p in PROMPTS)


def test_greedy_stops_at_stop_tokens(loaded):
    view = model_view(loaded)
    free = [reference_greedy(view, p, 8) for p in PROMPTS]
    # Declare the third generated token of the longest answer a stop token: that answer is cut before it.
    row = max(range(len(PROMPTS)), key=lambda i: len(free[i]))
    assert len(free[row]) >= 3
    stop = free[row][2]
    view.engine.stop_ids = view.engine.stop_ids | {stop}
    got = view.greedy(PROMPTS, max_new_tokens=8)
    for answer, reference in zip(got, free):
        cut = reference.index(stop) if stop in reference else len(reference)
        assert answer == reference[:cut]
    assert got[row] == free[row][: free[row].index(stop)]
    assert all(stop not in answer for answer in got)


def test_stop_ids_hold_eos_and_newlines(view):
    engine = view.engine
    assert engine.tokenizer.eos_token_id in engine.stop_ids
    newline = engine.tokenizer("a\nb", add_special_tokens=False)["input_ids"]
    assert any(t in engine.stop_ids for t in newline)
    plain = engine.tokenizer(" Paris", add_special_tokens=False)["input_ids"]
    assert not any(t in engine.stop_ids for t in plain)
    assert view.decode(engine.tokenizer(" Paris is", add_special_tokens=False)["input_ids"]) == "Paris is"


def test_engine_protocol_capabilities_and_text_views(loaded, view):
    """The engine declares what it offers, and the view's text views are the tokenizer's."""
    engine = view.engine
    assert isinstance(engine, Engine)
    assert {GRADIENTS, PREFIX_REUSE, ANSWER_TREE} <= engine.capabilities and DRAFT not in engine.capabilities
    assert engine.tree_capable and engine.architecture == engine.model.config.model_type
    text = "Dr. Smith lives in the U.S. now."
    encoded = engine.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    assert view.token_offsets(text) == [tuple(pair) for pair in encoded["offset_mapping"]]
    assert engine.encode_offsets(text)[0] == encoded["input_ids"]
    assert engine.encode_offsets(text, special_tokens=True)[0] == view.encode_prompt(text)
    assert view.token_texts(encoded["input_ids"]) == [engine.tokenizer.decode([t]) for t in encoded["input_ids"]]
    assert PREFIX_REUSE not in model_view(loaded, reuse_prefix=False).engine.capabilities


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
    view = model_view(loaded)
    single, multi = continuations(view)
    conts = single if kind == "single" else multi
    values = view.continuation_logprobs(COALITIONS, conts)
    reference = np.array([[reference_logprob(loaded, p, c) for c in conts] for p in COALITIONS])
    np.testing.assert_allclose(values, reference, atol=1e-4, rtol=0)
    rows = [view.encode_prompt(p) + (list(c) if kind == "multi" else []) for p in COALITIONS for c in (conts if kind == "multi" else [None])]
    # Every non-pad token is either forwarded or read from a shared prefix cache, never dropped or double counted.
    assert view.stats.forward_tokens + view.stats.reused_tokens == sum(len(r) for r in rows)
    assert view.stats.reused_tokens > 0  # the shared instruction really was computed once
    assert view.stats.forward_tokens < sum(len(r) for r in rows)
    plain = model_view(loaded, reuse_prefix=False)
    np.testing.assert_allclose(plain.continuation_logprobs(COALITIONS, conts), values, atol=1e-4, rtol=0)


def test_rows_of_separate_prefill_batches_decode_together(loaded, monkeypatch):
    """Prefill batches follow shared prefixes; decoding, bound by weight reads on a CPU, merges them."""
    view = model_view(loaded, max_batch_tokens=256)
    prompts = COALITIONS + PROMPTS
    expected = [reference_greedy(view, p, 6) for p in prompts]
    passes = {"prefill": 0, "decode": 0}
    for name, function in (("prefill", "_verify_batch"), ("decode", "_decode_states")):
        original = getattr(hf_decoding, function)
        monkeypatch.setattr(
            hf_decoding, function,
            lambda *args, _name=name, _original=original, **kwargs: passes.__setitem__(_name, passes[_name] + 1) or _original(*args, **kwargs),
        )
    assert view.greedy(prompts, max_new_tokens=6) == expected
    assert passes["prefill"] > 2 and 0 < passes["decode"] < passes["prefill"]


def test_greedy_with_shared_prefixes_matches_generate(loaded):
    view = model_view(loaded)
    expected = [reference_greedy(view, p, 6) for p in COALITIONS]
    assert view.greedy(COALITIONS, max_new_tokens=6) == expected
    # Sliding-window models share too (prefilled right-padded with masks built from positions); the prompts exceed the window.
    assert view.stats.reused_tokens > 0
    assert len(view.encode_prompt(COALITIONS[0])) > (view.engine.sliding_window or 0)
