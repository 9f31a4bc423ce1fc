"""The engine protocol's contract, passed by every implementation: the transformers engine, the batcher, Ray replicas.

Each implementation is checked against the transformers engine run directly: the
same scores, per-token scores, greedy answers (with and without an answer tree) and
gradients, costs charged to the caller's run context only, and cancellation.
"""
from __future__ import annotations

import time

import numpy as np
import pytest
from longshap.hierarchy.engines import ANSWER_TREE, GRADIENTS, Engine, RunContext
from longshap.hierarchy.engines.gradient_spec import GradientSpec
from longshap.hierarchy.errors import Cancelled
from longshap.hierarchy.speculative import AnswerTree
from longshap.server.batching import BatchingEngine

PROMPTS = [
    "Question: What is the capital of France?\nAnswer:",
    "Answer the question using the documents.\n\nDocument: Paris is the capital of France.\n\nQuestion: What is the capital of France?\nAnswer:",
    "Answer the question using the documents.\n\nQuestion: What is the capital of France?\nAnswer:",
]


@pytest.fixture(params=["transformers", "batching", "ray"])
def engine(request, tiny_explainer):
    if request.param == "transformers":
        yield tiny_explainer.engine
    elif request.param == "batching":
        batcher = BatchingEngine(tiny_explainer.engine)
        yield batcher
        batcher.close()
    else:
        yield request.getfixturevalue("ray_engine")


@pytest.fixture
def reference(tiny_explainer):
    return tiny_explainer.engine


def rows(engine: Engine) -> list[list[int]]:
    return [engine.encode(p) for p in PROMPTS]


def test_it_is_an_engine(engine):
    assert isinstance(engine, Engine)
    assert engine.architecture == "llama"


def test_tokenisation_matches(engine, reference):
    for prompt in PROMPTS:
        assert engine.encode(prompt) == reference.encode(prompt)
        assert engine.encode_offsets(prompt) == reference.encode_offsets(prompt)
    ids = reference.encode_offsets(" Paris is")[0]
    assert engine.decode(ids) == "Paris is" and engine.token_texts(ids) == reference.token_texts(ids)


def test_scores_match_and_are_charged_to_the_callers_context(engine, reference):
    continuations = [[5], [7, 9, 11]]
    expected = reference.score([(row, continuations) for row in rows(reference)], RunContext())
    context, bystander = RunContext(), RunContext()
    got = engine.score([(row, continuations) for row in rows(engine)], context)
    np.testing.assert_allclose(np.array(got), np.array(expected), atol=1e-5)
    assert context.stats.forward_tokens > 0 and context.stats.forward_passes > 0
    assert bystander.stats.as_dict() == RunContext().stats.as_dict()
    per_token = engine.score_tokens([(row, [7, 9, 11]) for row in rows(engine)], RunContext())
    np.testing.assert_allclose([t.sum() for t in per_token], np.array(expected)[:, 1], atol=1e-5)


def test_greedy_matches_with_and_without_an_answer_tree(engine, reference):
    expected = reference.greedy(rows(reference), 5, RunContext())
    assert engine.greedy(rows(engine), 5, RunContext()) == expected
    if ANSWER_TREE in engine.capabilities:
        tree = AnswerTree()
        tree.add(expected[0])
        context = RunContext()
        assert engine.greedy(rows(engine), 5, context, tree) == expected
        assert context.stats.tree_checks == len(PROMPTS)


def test_gradients_match(engine, reference):
    assert GRADIENTS in engine.capabilities
    ids = reference.encode(PROMPTS[1])
    spec = GradientSpec(tuple(ids), tuple(i % 2 == 0 for i in range(len(ids))), ((5, 7),), "logprob", None, "integrated_gradients", "zero", 4)
    expected = reference.attribute_tokens(spec, RunContext())
    context = RunContext()
    got = engine.attribute_tokens(spec, context)
    np.testing.assert_allclose(got.values, expected.values, atol=1e-6)
    assert got.rows == expected.rows and context.stats.forward_passes > 0


@pytest.mark.parametrize("stop", ["flag", "deadline"])
def test_a_stopped_context_stops_the_call(engine, stop):
    context = RunContext(should_stop=lambda: True) if stop == "flag" else RunContext(deadline=time.monotonic() - 1)
    with pytest.raises(Cancelled):
        engine.score([(row, [[5]]) for row in rows(engine)], context)
    with pytest.raises(Cancelled):
        engine.greedy(rows(engine), 3, context)
