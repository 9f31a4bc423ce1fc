"""Blended scoring on the transformers engine against the exact model, on tiny Llama and Gemma 3 (sliding windows) models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from longshap.hierarchy.engines import BLEND, RunContext
from longshap.hierarchy.engines.blend_plan import BlendPlan, plan_from_spans
from longshap.hierarchy.engines.hf_engine import TransformersEngine
from longshap.hierarchy.errors import Cancelled
from longshap.hierarchy.models import load_model
from longshap.hierarchy.prompt import QAPrompt
from longshap.hierarchy.segmentation import ROOT, Document, FeatureTree

DOCUMENTS = [
    Document("Paris is the capital of France. It is on the Seine. The quick brown fox jumps over the lazy dog.", "Paris"),
    Document("Berlin is the capital of Germany. Dr. Smith lives in the U.S. now.", "Berlin"),
    Document("The quick brown fox jumps over the lazy dog 1998. Paris is on the Seine.", "Fox"),
    Document("It is the capital of France.", ""),
]
PROMPT = QAPrompt("What is the capital of France?", DOCUMENTS)
ABSENT = [(), ("d0",), ("d1", "d3"), ("d0", "d1", "d3"), ("d0", "d2")]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def engine(request):
    directory = request.getfixturevalue("tiny_llama_dir" if request.param == "llama" else "tiny_gemma_dir")
    return TransformersEngine(load_model(str(directory), device="cpu"))


def _plan(engine: TransformersEngine, share: float) -> BlendPlan:
    ids, offsets = engine.encode_offsets(PROMPT.render(_tree(engine)), special_tokens=True)
    return plan_from_spans(ids, offsets, PROMPT.document_spans(), share)


def _tree(engine: TransformersEngine) -> FeatureTree:
    tree = FeatureTree(PROMPT.documents, lambda text: engine.encode_offsets(text)[1])
    tree.expand(ROOT, "document")
    return tree


def _rows(engine: TransformersEngine, absent_sets=ABSENT) -> list[tuple[list[int], list[int]]]:
    tree = _tree(engine)
    answer = engine.encode_offsets(" Paris of France")[0]
    return [(engine.encode(PROMPT.render(tree, absent)), answer) for absent in absent_sets]


def _blended(engine: TransformersEngine, rows, plan: BlendPlan, context: RunContext | None = None) -> list[np.ndarray]:
    context = context or RunContext()
    context.blend = plan
    return engine.score_tokens(rows, context)


def test_the_engine_declares_blend(engine):
    assert BLEND in engine.capabilities


def test_the_document_spans_are_the_separator_and_block_of_each_document(engine):
    full = PROMPT.render(_tree(engine))
    for (start, end), doc in zip(PROMPT.document_spans(), DOCUMENTS):
        assert full[start : start + 2] == "\n\n" and full[start:end].endswith(doc.text)
    assert full[PROMPT.document_spans()[-1][1] :].startswith("\n\nQuestion:")


def test_recomputing_every_token_is_the_exact_model(engine):
    rows = _rows(engine)
    exact = engine.score_tokens(rows, RunContext())
    context = RunContext()
    blended = _blended(engine, rows, _plan(engine, 1.0), context)
    for want, got in zip(exact, blended):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert context.stats.blended_rows == len(rows)


def test_a_document_in_its_own_place_with_nothing_before_it_needs_no_recompute(engine):
    rows = _rows(engine, [("d1", "d2", "d3")])
    np.testing.assert_allclose(_blended(engine, rows, _plan(engine, 0.0))[0], engine.score_tokens(rows, RunContext())[0], atol=1e-5)


def test_partial_recompute_moves_values_less_than_none(engine):
    rows = _rows(engine)
    exact = np.concatenate(engine.score_tokens(rows, RunContext()))
    errors = [np.abs(np.concatenate(_blended(engine, rows, _plan(engine, share))) - exact).max() for share in (0.0, 0.5, 1.0)]
    assert errors[0] > 1e-4 and errors[2] < 1e-5
    assert errors[1] < errors[0]


@pytest.mark.parametrize("shift", [1, 37, 300])
def test_rotating_cached_keys_equals_encoding_them_at_the_new_position(engine, shift):
    """A token run alone attends only by relative position: its states at p + shift are its states at p, rotated."""
    ids = torch.tensor([engine.encode_offsets(DOCUMENTS[0].text)[0]])

    def states(first: int) -> DynamicCache:
        cache = DynamicCache()
        positions = torch.arange(first, first + ids.shape[1])[None]
        with torch.inference_mode():
            engine.run_backbone(cache, input_ids=ids, position_ids=positions)
        return cache

    here, there = states(5), states(5 + shift)
    shifts = torch.full((1, ids.shape[1]), shift)
    for layer, (near, far) in enumerate(zip(here.layers, there.layers)):
        cos, sin = engine.blend._rotation(shifts, engine.blend.layer_types[layer], near.keys)
        half = near.keys.shape[-1] // 2
        rotated = near.keys * cos + torch.cat((-near.keys[..., half:], near.keys[..., :half]), -1) * sin
        torch.testing.assert_close(rotated, far.keys, atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(near.values, far.values, atol=2e-5, rtol=1e-4)


def test_document_states_are_computed_once_per_cache_scope(engine):
    rows, plan = _rows(engine), _plan(engine, 0.0)
    context = RunContext()
    _blended(engine, rows[:2], plan, context)
    first = context.stats.forward_tokens
    _blended(engine, rows[:2], plan, context)
    assert context.stats.forward_tokens - first < first - sum(len(b) for b in plan.blocks)
    again = RunContext()
    _blended(engine, rows[:2], plan, again)
    assert again.stats.forward_tokens == first


def test_small_batch_budgets_split_blended_rows_and_change_no_value(engine):
    rows, plan = _rows(engine), _plan(engine, 0.3)
    wide = _blended(engine, rows, plan)
    narrow_engine = TransformersEngine(engine.loaded, max_batch_tokens=16)
    context = RunContext()
    narrow = _blended(narrow_engine, rows, plan, context)
    assert context.stats.forward_passes > len(plan.blocks) + 2
    for want, got in zip(wide, narrow):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_whole_continuation_scores_are_blended_too(engine):
    rows, plan = _rows(engine), _plan(engine, 1.0)
    score_rows = [(prompt, [answer, answer[:1]]) for prompt, answer in rows]
    context = RunContext()
    context.blend = plan
    for want, got in zip(engine.score(score_rows, RunContext()), engine.score(score_rows, context)):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_rows_without_the_plan_head_are_scored_exactly(engine):
    rows = [(engine.encode("Question: What is the capital of France?\nAnswer:"), engine.encode_offsets(" Paris")[0])]
    context = RunContext()
    got = _blended(engine, rows, _plan(engine, 0.0), context)
    np.testing.assert_allclose(got[0], engine.score_tokens(rows, RunContext())[0], atol=1e-6)
    assert context.stats.blended_rows == 0


def test_a_stopped_run_stops_while_encoding_documents(engine):
    calls = []

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Cancelled):
        _blended(engine, _rows(engine), _plan(engine, 0.0), RunContext(should_stop=stop_after_two))
