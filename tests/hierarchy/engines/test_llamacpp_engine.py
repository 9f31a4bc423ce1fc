"""The llama.cpp engine beyond the shared contract: prefix sharing and its cache scope, KV limits, stops, offsets, the default GGUF."""
from __future__ import annotations

import numpy as np
import pytest
from longshap.hierarchy.engines import RunContext
from longshap.hierarchy.engines.base import CacheScope
from longshap.hierarchy.errors import Cancelled

pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed (pip install 'longshap[llamacpp]')")

INSTRUCTION = "Answer the question using the documents.\n\n"
DOCUMENTS = ["Document: Paris is the capital of France.\n", "Document: Berlin is the capital of Germany.\n", "Document: The Seine flows.\n"]
QUESTION = "Question: What is the capital of France?\nAnswer:"
NATIVE_TOLERANCE = 2e-4
"""float32 sums in another order: llama.cpp's kernels vary with a batch's shape (measured: 6e-5 on the tiny model)."""


def coalition_rows(engine, continuations=((5,), (7, 9))) -> list:
    prompts = [INSTRUCTION + "".join(d for i, d in enumerate(DOCUMENTS) if mask >> i & 1) + QUESTION for mask in range(8)]
    return [(engine.encode(p), [list(c) for c in continuations]) for p in prompts]


def test_shared_prefixes_are_decoded_once_and_values_do_not_change(tiny_gguf, llamacpp_engine):
    from longshap.hierarchy.engines.llamacpp_engine import LlamaCppEngine

    rows = coalition_rows(llamacpp_engine)
    shared, alone = RunContext(), RunContext()
    plain = LlamaCppEngine(tiny_gguf, threads=1, reuse_prefix=False)
    try:
        expected = plain.score(rows, alone)
    finally:
        plain.close()
    got = llamacpp_engine.score(rows, shared)
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=NATIVE_TOLERANCE)
    total = sum(len(prompt) + len(c) for prompt, cs in rows for c in cs)
    assert shared.stats.reused_tokens > 0 and shared.stats.forward_tokens + shared.stats.reused_tokens == total
    assert alone.stats.reused_tokens == 0 and alone.stats.forward_tokens == total


def test_the_kept_prefix_belongs_to_its_cache_scope(llamacpp_engine):
    rows = coalition_rows(llamacpp_engine)[:2]
    scope = CacheScope()
    first, again, other = RunContext(cache=scope), RunContext(cache=scope), RunContext()
    expected = llamacpp_engine.score(rows, first)
    np.testing.assert_allclose(llamacpp_engine.score(rows, again), expected, atol=NATIVE_TOLERANCE)
    assert again.stats.cached_tokens > first.stats.cached_tokens, "the scope's own prefix is read back"
    np.testing.assert_allclose(llamacpp_engine.score(rows, other), expected, atol=NATIVE_TOLERANCE)
    assert other.stats.as_dict() == first.stats.as_dict(), "another scope starts as the first did: it never reads that prefix"
    disabled = RunContext(cache=CacheScope(enabled=False))
    llamacpp_engine.score(rows, disabled)
    llamacpp_engine.score(rows, disabled)
    assert disabled.stats.cached_tokens == 0


def test_batches_fit_the_kv_cells_and_a_prompt_that_cannot_is_refused(tiny_gguf, llamacpp_engine):
    from longshap.hierarchy.engines.llamacpp_engine import LlamaCppEngine

    rows = coalition_rows(llamacpp_engine)
    expected = llamacpp_engine.score(rows, RunContext())
    small = LlamaCppEngine(tiny_gguf, threads=1, kv_cells=128, max_batch_tokens=64, max_batch_size=3)
    try:
        context = RunContext()
        np.testing.assert_allclose(np.array(small.score(rows, context)), np.array(expected), atol=NATIVE_TOLERANCE)
        assert context.stats.forward_passes > 2
        assert small.greedy([rows[-1][0]], 4, RunContext()) == llamacpp_engine.greedy([rows[-1][0]], 4, RunContext())
        with pytest.raises(ValueError, match="does not fit the engine's 128 KV cells"):
            small.score([(list(range(5, 140)), [[5]])], RunContext())
    finally:
        small.close()
    with pytest.raises(ValueError, match="below kv_cells"):
        LlamaCppEngine(tiny_gguf, kv_cells=64, max_batch_tokens=64)


def test_a_run_stopped_mid_call_leaves_the_engine_clean(llamacpp_engine):
    rows = coalition_rows(llamacpp_engine)
    expected = llamacpp_engine.score(rows, RunContext())
    polls = iter(range(1000))
    stopping = RunContext(should_stop=lambda: next(polls) >= 3)  # lets the call start, stops it between decode calls
    with pytest.raises(Cancelled):
        llamacpp_engine.score(rows * 4, stopping)
    np.testing.assert_allclose(np.array(llamacpp_engine.score(rows, RunContext())), np.array(expected), atol=NATIVE_TOLERANCE)


def test_offsets_cover_the_text_with_multibyte_characters(llamacpp_engine, tiny_explainer):
    text = "Café déjà vu — naïve 1998, ok"
    ids, spans = llamacpp_engine.encode_offsets(text)
    reference_ids, reference_spans = tiny_explainer.engine.encode_offsets(text)
    assert ids == reference_ids and spans == reference_spans
    with_bos, special_spans = llamacpp_engine.encode_offsets(text, special_tokens=True)
    assert with_bos[1:] == ids and special_spans[0] == (0, 0) and special_spans[1:] == spans


def test_gradient_methods_are_refused_by_name(llamacpp_engine):
    from longshap.hierarchy import Explainer
    from longshap.hierarchy.request import RequestError

    with pytest.raises(RequestError, match="LlamaCppEngine engine does not offer"):
        Explainer(llamacpp_engine).explain(question="Q?", documents=[{"title": "t", "text": "Paris."}], method="integrated_gradients")


@pytest.mark.slow
def test_the_default_gguf_scores_as_transformers_does_on_its_dequantised_weights(default_explainer):
    """Q4_K_M weights are the same numbers on both sides; llama.cpp also quantises activations (Q8) in its matmuls."""
    from longshap.client.data import load_nq, nq_prompt
    from longshap.hierarchy import Explainer

    llama = Explainer.from_pretrained(engine="llamacpp", threads=2)
    assert type(llama.engine).__name__ == "LlamaCppEngine" and llama.architecture == "gemma3"
    prompt = nq_prompt(load_nq(), 5, 2, seed=0)
    options = dict(question=prompt.question, documents=prompt.documents, levels=["document"], budget=16, seed=0, method="exact")
    torch_result = default_explainer.explain(**options)
    llama_result = llama.explain(**options, target=torch_result.answer)
    reference = np.array([f.value for f in torch_result.levels[0].features])
    got = np.array([f.value for f in llama_result.levels[0].features])
    effect = abs(torch_result.full_value - torch_result.empty_value)
    assert np.max(np.abs(got - reference)) <= QUANTISED_TOLERANCE * effect
    assert np.argmax(got) == np.argmax(reference)
    llama.engine.close()


QUANTISED_TOLERANCE = 0.05
"""Largest document-value difference allowed, as a share of the total effect (measured: see the engines page)."""
