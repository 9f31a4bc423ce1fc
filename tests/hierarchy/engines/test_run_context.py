"""The per-request run context: cancellation and deadlines, statistics and prefix-state scopes, none of them kept on the engine."""
from __future__ import annotations

import time

import numpy as np
import pytest

from longshap.hierarchy.engines import CacheScope, EngineStats, ModelView, RunContext
from longshap.hierarchy.engines.hf_engine import TransformersEngine
from longshap.hierarchy.errors import Cancelled
from longshap.hierarchy.models import load_model

PROMPTS = [
    "Paris",
    "Question: What is the capital of France?\nAnswer:",
    "Classify the text as one of: negative, positive.\n\nText: a charming and often affecting journey\nLabel:",
]
INSTRUCTION = "Answer the question using the documents. Answer with a short phrase.\n\n"
DOCS = [
    "Document (Title: Paris): Paris is the capital of France. It is on the Seine.",
    "Document (Title: Berlin): Berlin is the capital of Germany. Dr. Smith lives in the U.S. now.",
    "Document (Title: Paris): The quick brown fox jumps over the lazy dog 1998.",
]
QUESTION = "\n\nQuestion: What is the capital of France?\nAnswer:"
COALITIONS = [INSTRUCTION + "\n\n".join(d for i, d in enumerate(DOCS) if mask >> i & 1) + QUESTION for mask in range(8)]


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return load_model(str(tiny_llama_dir), device="cpu")


@pytest.fixture
def engine(llama):
    return TransformersEngine(llama, max_batch_size=2)


def test_deadlines_and_stop_flags():
    assert RunContext(deadline=time.monotonic() - 1).stopped()
    assert not RunContext(deadline=time.monotonic() + 60).stopped()
    assert not RunContext().stopped()
    flag = [False]
    context = RunContext(should_stop=lambda: flag[0], deadline=time.monotonic() + 60)
    context.check()
    flag[0] = True
    with pytest.raises(Cancelled):
        context.check()
    with pytest.raises(Cancelled):
        RunContext(deadline=time.monotonic() - 1).check()


def test_a_passed_deadline_stops_a_session_before_any_model_work(engine):
    view = ModelView(engine, RunContext(deadline=time.monotonic() - 1))
    with pytest.raises(Cancelled):
        view.continuation_logprobs(PROMPTS, [[5]])
    with pytest.raises(Cancelled):
        view.greedy(PROMPTS, 3)
    assert view.stats == EngineStats()
    assert ModelView(engine).continuation_logprobs(PROMPTS, [[5]]).shape == (len(PROMPTS), 1)  # the engine is unaffected


@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_should_stop_cancels_before_a_decoder_layer(request, architecture):
    directory = request.getfixturevalue({"llama": "tiny_llama_dir", "gemma3": "tiny_gemma_dir"}[architecture])
    loaded = load_model(str(directory), device="cpu")  # a model of its own: the test hooks its layers
    engine = TransformersEngine(loaded)
    layers = [m for m in loaded.model.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert len(layers) == 2
    ran: list[int] = []
    for index, layer in enumerate(layers):
        layer.register_forward_hook(lambda *_, index=index: ran.append(index))
    view = ModelView(engine, RunContext(should_stop=lambda: len(ran) >= 1))
    with pytest.raises(Cancelled):
        view.continuation_logprobs(PROMPTS, [[5]])
    # Polled before each layer: stopped inside the first forward pass, after its first layer.
    assert ran == [0] and view.stats.forward_passes == 1
    with pytest.raises(Cancelled):
        ModelView(engine, RunContext(should_stop=lambda: True)).greedy(PROMPTS[:1], max_new_tokens=3)
    # The cancelled calls left nothing behind: a new request on the same engine runs (the engine lock was released).
    ran.clear()
    assert ModelView(engine).continuation_logprobs(PROMPTS[:1], [[5]]).shape == (1, 1)
    assert ran == [0, 1]


def test_a_caller_waiting_for_the_engine_honours_its_deadline(engine):
    with engine.running(RunContext()):  # another request's call holds the engine
        started = time.monotonic()
        view = ModelView(engine, RunContext(deadline=started + 0.2))
        with pytest.raises(Cancelled, match="waiting"):
            view.continuation_logprobs(PROMPTS, [[5]])
        assert time.monotonic() - started < 2
    assert view.stats.forward_passes == 0
    assert ModelView(engine).continuation_logprobs(PROMPTS[:1], [[5]]).shape == (1, 1)


def test_an_engine_shared_by_two_sessions_keeps_their_stats_apart(llama, engine):
    first, second = ModelView(engine), ModelView(engine)
    first.continuation_logprobs(PROMPTS, [[5]])
    second.greedy(PROMPTS[:2], 4)
    first.continuation_logprobs(PROMPTS[:1], [[5, 6]])
    second.continuation_logprobs(PROMPTS[1:], [[7]])
    # Each equals the same calls made alone on an engine of its own.
    alone_first, alone_second = (ModelView(TransformersEngine(llama, max_batch_size=2)) for _ in range(2))
    alone_first.continuation_logprobs(PROMPTS, [[5]])
    alone_first.continuation_logprobs(PROMPTS[:1], [[5, 6]])
    alone_second.greedy(PROMPTS[:2], 4)
    alone_second.continuation_logprobs(PROMPTS[1:], [[7]])
    assert first.stats == alone_first.stats and second.stats == alone_second.stats
    assert first.stats.evaluations == len(PROMPTS) + 1 and second.stats.evaluations == 2 + len(PROMPTS) - 1
    assert first.stats.decode_steps == 0 < second.stats.decode_steps
    assert not hasattr(engine, "stats") and not hasattr(engine, "should_stop")


def test_cache_scopes_are_separate_by_default(engine):
    first, second = ModelView(engine), ModelView(engine)
    values = first.continuation_logprobs(COALITIONS, [[5]])
    np.testing.assert_allclose(second.continuation_logprobs(COALITIONS, [[5]]), values, atol=1e-5)
    assert engine.prefix.store(first.context) is not engine.prefix.store(second.context)
    assert engine.prefix.store(first.context).nbytes > 0
    assert second.stats == first.stats  # the second request found nothing of the first's


def test_a_scope_passed_to_two_contexts_shares_their_prefix_states(engine):
    scope = CacheScope()
    first, second = ModelView(engine, RunContext(cache=scope)), ModelView(engine, RunContext(cache=scope))
    values = first.continuation_logprobs(COALITIONS, [[5]])
    np.testing.assert_allclose(second.continuation_logprobs(COALITIONS, [[5]]), values, atol=1e-4)
    assert engine.prefix.store(first.context) is engine.prefix.store(second.context)
    assert second.stats.forward_tokens < first.stats.forward_tokens
    assert second.stats.cached_tokens > first.stats.cached_tokens
    # Every token is still forwarded or reused: sharing moves tokens from one count to the other.
    assert second.stats.forward_tokens + second.stats.reused_tokens == first.stats.forward_tokens + first.stats.reused_tokens
    scope.clear()
    third = ModelView(engine, RunContext(cache=scope))
    third.continuation_logprobs(COALITIONS, [[5]])
    assert third.stats == first.stats  # a cleared scope starts empty


def test_a_disabled_scope_keeps_no_prefix_across_calls(engine):
    off = ModelView(engine, RunContext(cache=CacheScope(enabled=False)))
    first = off.continuation_logprobs(COALITIONS, [[5]])
    once = off.stats.as_dict()
    np.testing.assert_allclose(off.continuation_logprobs(COALITIONS, [[5]]), first, atol=1e-5)
    assert {k: v - once[k] for k, v in off.stats.as_dict().items()} == once  # the second call cost exactly what the first did
    assert off.stats.cached_tokens == 0 and off.stats.reused_tokens > 0  # rows of one batch still share their prefix
    store = engine.prefix.store(off.context)
    assert store.max_bytes == 0 and store.nbytes == 0
    on = ModelView(engine)
    on.continuation_logprobs(COALITIONS, [[5]])
    before = on.stats.forward_tokens
    on.continuation_logprobs(COALITIONS, [[5]])
    assert on.stats.forward_tokens - before < before and on.stats.cached_tokens > 0
    np.testing.assert_allclose(on.continuation_logprobs(COALITIONS, [[5]]), first, atol=1e-4)
