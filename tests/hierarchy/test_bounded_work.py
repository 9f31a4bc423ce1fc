"""A request's work is bounded by what it asked for: evaluations by the budget, memory by chunks, time by the stop flag."""
from __future__ import annotations

import gc
import json
import math
import weakref

import numpy as np
import pytest
from longshap.hierarchy.allocation import z_score
from longshap.hierarchy.errors import Cancelled
from longshap.hierarchy.request import ExplainRequest
from longshap.hierarchy.subgames import POLL_EVERY, RequestGame

WORDS = " ".join(f"w{i}" for i in range(200))


def test_a_small_budget_bounds_every_level_and_the_plan_says_so(tiny_explainer):
    """A 200-word document at budget 4 used to run 2n + 1 evaluations at the word level."""
    events = list(tiny_explainer.explain_stream(question="q?", documents=[WORDS], levels=["word"], budget=4, target="w1"))
    start, level = events[1], events[2].result
    assert start.planned_evaluations == 4
    assert level.evaluations <= 4
    assert all(math.isinf(f.stderr) for f in level.features)  # too few evaluations to measure a spread: unknown, said so


def test_a_level_budget_shared_by_more_games_than_it_affords_plans_only_what_it_has(tiny_explainer):
    documents = ["One. Two. Three.", "Four. Five. Six.", "Seven. Eight. Nine."]
    result = tiny_explainer.explain(
        question="q?", documents=documents, levels=["document", "sentence"], budget=3, target="x", thresholds=0, max_expanded=3,
    )
    for level in result.levels:
        assert level.evaluations <= 3


def test_rendering_polls_the_stop_flag_and_values_in_chunks():
    renders, calls = [], []
    stop_after = 2 * POLL_EVERY

    def render(absent):
        renders.append(absent)
        return "x" * 10

    def value_fn(prompts):
        calls.append(len(prompts))
        return np.zeros(len(prompts))

    game = RequestGame(render, value_fn, should_stop=lambda: len(renders) >= stop_after)
    with pytest.raises(Cancelled):
        game.values([frozenset({str(i)}) for i in range(100_000)])
    assert len(renders) <= stop_after + POLL_EVERY and not calls  # stopped while rendering, before any model work


def test_a_confidence_within_float_precision_of_one_still_has_a_z_score():
    assert math.isfinite(z_score(1 - 1e-16)) and z_score(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert ExplainRequest.build(question="q", documents=["d"], adaptive=True, confidence=1 - 1e-16).allocation.z > 8


def test_gradient_standard_errors_are_null_in_strict_json(tiny_explainer):
    result = tiny_explainer.explain(question="q?", documents=["a b c"], levels=["document"], method="saliency", target="b")
    text = json.dumps(result.to_dict(), allow_nan=False)  # raises on NaN or Infinity
    assert json.loads(text)["levels"][0]["features"][0]["stderr"] is None


def test_a_cancelled_request_leaves_no_prefix_states_behind(tiny_explainer, monkeypatch):
    """Each request's prefix states live in its own run context, freed when it ends (before: a shared cache kept them)."""
    scopes = []
    model_view = tiny_explainer.model_view

    def recording(*args, **kwargs):
        made = model_view(*args, **kwargs)
        scopes.append(weakref.ref(made.context.cache))
        return made

    monkeypatch.setattr(tiny_explainer, "model_view", recording)
    stream = tiny_explainer.explain_stream(question="q?", documents=[WORDS], levels=["word"], budget=400, target="w1")
    next(stream)
    assert scopes and scopes[0]() is not None
    stream.close()
    gc.collect()
    assert scopes[0]() is None


def test_a_level_cap_bounds_the_estimators_defaults_too(tiny_explainer):
    """A server's max_budget caps what a request without a budget plans (the default is 10 (n + 1) per game)."""
    from longshap.hierarchy import Explainer

    capped = Explainer(tiny_explainer.engine, max_level_budget=30)
    events = list(capped.explain_stream(question="q?", documents=[WORDS], levels=["word"], target="w1"))
    assert events[1].planned_evaluations == 30 and events[2].result.evaluations <= 30


def test_a_game_with_more_players_than_allowed_is_refused_before_its_work(tiny_explainer):
    from longshap.hierarchy import Explainer
    from longshap.hierarchy.request import RequestError

    capped = Explainer(tiny_explainer.engine, max_players=50)
    with pytest.raises(RequestError, match="200 word units, more than the 50"):
        list(capped.explain_stream(question="q?", documents=[WORDS], levels=["word"], target="w1"))
    sentence = "Short one. " + WORDS + "."
    events = []
    with pytest.raises(RequestError, match="d0.s1 has 200 word units"):
        for event in capped.explain_stream(question="q?", documents=[sentence], levels=["sentence", "word"], target="w1", thresholds=0):
            events.append(event)
    assert events[-1].kind == "level" and events[-1].result.level == "sentence"  # the levels before it were streamed
