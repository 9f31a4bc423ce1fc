"""The hierarchy walk: streaming, pruning, nested coherence, validation, and one real-model run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from longshap.client.data import load_nq, nq_prompt
from longshap.hierarchy.explainer import Explainer
from longshap.hierarchy.errors import Cancelled

DOCUMENTS = [
    {"title": "Paris", "text": "Paris is the capital of France. It lies on the Seine. Dr. Smith lives there."},
    {"title": "Berlin", "text": "Berlin is the capital of Germany. It has many museums."},
    {"title": "Fox", "text": "The quick brown fox jumps over the lazy dog. The dog sleeps."},
]
QUESTION = "What is the capital of France?"


def qa(explainer: Explainer, **options):
    return explainer.explain(question=QUESTION, documents=DOCUMENTS, target="Paris", **options)


def expected_expansions(level, total_effect: float, cap) -> set[str]:
    """TextGenSHAP's rule, recomputed from the reported numbers."""
    sign = 1.0 if total_effect >= 0 else -1.0
    importance = {f.id: sign * f.value - f.stderr for f in level.features}
    passing = sorted((i for i, v in importance.items() if v >= level.threshold * abs(total_effect)), key=lambda i: -importance[i])
    return set(passing[:cap])


def test_stream_order_and_schema(tiny_explainer):
    events = list(tiny_explainer.explain_stream(question=QUESTION, documents=DOCUMENTS, target="Paris", thresholds=0.0, budget=40))
    kinds = [e.kind for e in events]
    assert kinds[0] == "answer" and kinds[-1] == "done"
    assert kinds[1:-1] == ["level_start", "level"] * (len(kinds[1:-1]) // 2)
    result = events[-1].explanation.to_dict()
    json.dumps(result)
    assert set(result) >= {"answer", "levels", "stats"}
    assert set(result["stats"]) >= {"evaluations", "forward_tokens", "wall_seconds"}
    for level in result["levels"]:
        assert set(level) >= {"level", "features", "evaluations"}
        for feature in level["features"]:
            assert set(feature) >= {"id", "parent", "text", "start", "end", "value", "stderr", "expanded"}
            assert DOCUMENTS[feature["doc"]]["text"][feature["start"] : feature["end"]] == feature["text"]


@pytest.mark.parametrize("threshold,cap", [(0.0, 100), (0.05, 2), (0.2, 1), (10.0, 100)])
def test_pruning_expands_exactly_the_units_that_pass(tiny_explainer, threshold, cap):
    result = qa(tiny_explainer, thresholds=threshold, max_expanded=cap, budget=60, seed=3)
    for level, following in zip(result.levels, result.levels[1:] + [None]):
        expanded = {f.id for f in level.features if f.expanded}
        if following is None:
            assert not expanded
            continue
        assert expanded == expected_expansions(level, result.total_effect, cap)
        assert {f.parent for f in following.features} == expanded
    if threshold == 10.0:
        assert len(result.levels) == 1


def test_levels_are_one_coherent_game(tiny_explainer):
    """Owen mode, exact: each expanded unit's children add up to the unit's value."""
    result = qa(
        tiny_explainer, method="exact", budget=10**6, thresholds=0.0, max_expanded={"document": 100, "sentence": 2},
        levels=("document", "sentence", "word"),
    )
    assert all(f.stderr == 0 for level in result.levels for f in level.features)  # every context enumerated
    for parent_level, child_level in zip(result.levels, result.levels[1:]):
        for parent in parent_level.features:
            children = [f.value for f in child_level.features if f.parent == parent.id]
            if parent.expanded:
                assert sum(children) == pytest.approx(parent.value, abs=1e-6)
    documents = result.level("document")
    assert sum(f.value for f in documents.features) == pytest.approx(result.total_effect, abs=1e-6)


def test_same_seed_same_values_and_seed_matters(tiny_explainer):
    first = qa(tiny_explainer, levels=("document", "sentence"), thresholds=0.0, budget=30, seed=7)
    again = qa(tiny_explainer, levels=("document", "sentence"), thresholds=0.0, budget=30, seed=7)
    other = qa(tiny_explainer, levels=("document", "sentence"), thresholds=0.0, budget=30, seed=8)
    values = lambda r: [f.value for level in r.levels for f in level.features]  # noqa: E731
    assert values(first) == values(again)
    assert values(first) != values(other)


def test_local_mode_and_placeholder(tiny_explainer):
    local = qa(tiny_explainer, mode="local", levels=("document", "sentence"), thresholds=0.0, method="exact")
    owen = qa(tiny_explainer, mode="owen", levels=("document", "sentence"), thresholds=0.0, method="exact", budget=10**4)
    assert [f.value for f in local.levels[0].features] == pytest.approx([f.value for f in owen.levels[0].features])
    assert [f.value for f in local.levels[1].features] != pytest.approx([f.value for f in owen.levels[1].features])
    placeholder = qa(tiny_explainer, levels=("document",), placeholder="[removed]", method="exact")
    assert [f.value for f in placeholder.levels[0].features] != pytest.approx([f.value for f in owen.levels[0].features])


def test_generated_answer_and_answer_distribution(tiny_explainer):
    result = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, value="answers", max_new_tokens=3, levels=("document",), method="exact")
    assert result.answers and result.answers[0]["answer"] == result.answer
    assert sum(a["share"] for a in result.answers) <= 1.0 + 1e-9
    feature = result.levels[0].features[0]
    assert feature.values_by_answer is not None and result.answer in feature.values_by_answer


def test_classification(tiny_explainer):
    text = "a charming and often affecting journey"
    result = tiny_explainer.explain(text=text, labels=["negative", "positive"], method="exact")
    probabilities = result.label_probabilities
    assert sum(probabilities.values()) == pytest.approx(1.0)
    assert result.answer == max(probabilities, key=probabilities.get)
    words = result.level("word").features
    assert [f.text for f in words] == text.split()
    assert sum(f.value for f in words) == pytest.approx(result.total_effect, abs=1e-9)
    assert result.full_value == pytest.approx(np.log(probabilities[result.answer]))


def test_progress_and_cancellation(tiny_explainer):
    seen = []
    qa(tiny_explainer, levels=("document", "sentence"), thresholds=0.0, budget=400, on_progress=seen.append)
    assert seen and all(0 < p.evaluations <= p.planned_evaluations + 64 for p in seen)
    calls = {"n": 0}

    def stop_after_some_work() -> bool:
        calls["n"] += 1
        return calls["n"] > 20

    with pytest.raises(Cancelled):
        qa(tiny_explainer, budget=10**4, should_stop=stop_after_some_work)
    assert qa(tiny_explainer, levels=("document",)).answer == "Paris"  # the explainer still works afterwards


@pytest.mark.parametrize(
    "options,message",
    [
        ({"question": ""}, "question"),
        ({"documents": []}, "documents"),
        ({"documents": [{"title": "x", "text": "   "}]}, "documents[0].text"),
        ({"documents": [{"title": "x"}]}, "documents[0].text"),
        ({"documents": [42]}, "documents[0]"),
        ({"levels": ("word", "document")}, "levels"),
        ({"levels": ("paragraph",)}, "levels"),
        ({"levels": ()}, "levels"),
        ({"levels": ("word", "token")}, "levels"),
        ({"method": "magic"}, "method"),
        ({"budget": 0}, "budget"),
        ({"budget": -5}, "budget"),
        ({"thresholds": float("nan")}, "thresholds"),
        ({"thresholds": -0.1}, "thresholds"),
        ({"thresholds": {"chapter": 0.1}}, "thresholds"),
        ({"max_expanded": -1}, "max_expanded"),
        ({"mode": "global"}, "mode"),
        ({"value": "label"}, "value"),
        ({"value": "nonsense"}, "value function"),
        ({"target": "  "}, "target"),
        ({"target_stderr": 0}, "target_stderr"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"text": "hello", "labels": ["a", "b"]}, "not both"),
    ],
)
def test_bad_requests_name_the_field(tiny_explainer, options, message):
    request = {"question": QUESTION, "documents": DOCUMENTS, "target": "Paris", **options}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        tiny_explainer.explain(**request)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"labels": ["positive"]}, "labels"),
        ({"labels": ["pos", "pos"]}, "duplicate"),
        ({"labels": ["pos", ""]}, "labels"),
        ({"target": "neutral"}, "target"),
        ({"text": ""}, "text"),
        ({"value": "logprob"}, "value"),
    ],
)
def test_bad_classification_requests(tiny_explainer, options, message):
    request = {"text": "a fine film", "labels": ["negative", "positive"], **options}
    with pytest.raises(ValueError, match=message):
        tiny_explainer.explain(**request)


@pytest.mark.slow
def test_default_model_finds_the_gold_passage(default_explainer):
    """4-passage NQ prompt on Gemma 3 270M: the gold passage, then its answer sentence, carry the answer."""
    prompt = nq_prompt(load_nq(), 5, 3, seed=0)
    result = default_explainer.explain(
        question=prompt.question, documents=prompt.documents, levels=("document", "sentence"), budget=24, seed=0
    )
    assert result.answer in prompt.answers
    documents = result.level("document").features
    top = max(documents, key=lambda f: f.value)
    assert top.id == f"d{prompt.gold_index}" and top.expanded
    sentences = [f for f in result.level("sentence").features if f.parent == top.id]
    assert result.answer in max(sentences, key=lambda f: f.value).text


def test_probability_function_feeds_the_metrics(tiny_explainer):
    from longshap.hierarchy import metrics

    text = "a charming and often affecting journey"
    request = {"text": text, "labels": ["negative", "positive"]}
    result = tiny_explainer.explain(**request, method="exact")
    units, probability = tiny_explainer.probability_function("word", **request)
    assert units == [f.id for f in result.level("word").features]
    everything, nothing = probability(np.array([[True] * len(units), [False] * len(units)]))
    assert everything == pytest.approx(result.label_probabilities[result.answer])
    assert np.log(nothing) == pytest.approx(result.empty_value)
    values = [f.value for f in result.level("word").features]
    report = metrics.aopc(probability, values)
    assert 0 <= report["aopc_comprehensiveness"] <= 1 and 0 <= report["aopc_sufficiency"] <= 1
    qa_units, qa_probability = tiny_explainer.probability_function("document", question=QUESTION, documents=DOCUMENTS, target="Paris")
    qa_result = qa(tiny_explainer, levels=("document",), value="probability", method="exact")
    assert qa_probability(np.ones((1, len(qa_units)), dtype=bool))[0] == pytest.approx(qa_result.full_value)


def test_auto_is_the_default_and_each_level_names_the_estimator_it_ran(tiny_explainer):
    result = qa(tiny_explainer, thresholds=0.0, levels=("document", "sentence"))
    documents, sentences = result.levels
    # The top level is a plain game of 3 documents with a generous default budget (10(n+1) >= 12n): `select`,
    # whose candidates are all exact on 3 players (every stratum enumerated), so the tie goes to the simplest.
    assert documents.method == "leverage"
    assert sentences.method == "kernel"  # Owen subgames draw outer contexts: auto hands them to kernel
    assert all(np.isfinite(f.value) for level in result.levels for f in level.features)


@pytest.mark.parametrize("value", ["logprob", "probability"])
def test_per_token_attributions_sum_to_the_answers(tiny_explainer, value):
    """One column per answer token, from the same passes; every unit's token values add up to its value."""
    docs = [{"title": "Paris", "text": "Paris is the capital of France. It is on the Seine."}]
    result = tiny_explainer.explain(question="What is the capital of France?", documents=docs, target="Paris is", value=value, budget=24)
    assert result.answer_tokens is not None and len(result.answer_tokens) >= 2
    assert "".join(result.answer_tokens).strip() == "Paris is"
    for level in result.levels:
        for feature in level.features:
            assert len(feature.values_by_token) == len(result.answer_tokens)
            assert sum(feature.values_by_token) == pytest.approx(feature.value, abs=1e-9)
    assert result.to_dict()["levels"][0]["features"][0]["values_by_token"] == result.levels[0].features[0].values_by_token


def test_explainer_builds_its_engine_and_gives_each_request_a_session(tiny_llama_dir):
    from longshap.hierarchy.engines import TransformersEngine
    from longshap.hierarchy.models import load_model

    loaded = load_model(str(tiny_llama_dir), device="cpu")
    explainer = Explainer(loaded)
    assert isinstance(explainer.engine, TransformersEngine) and explainer.engine.model is loaded.model
    assert explainer.architecture == "llama"
    first, second = explainer.model_view(), explainer.model_view(should_stop=lambda: True)
    assert first.engine is second.engine is explainer.engine
    assert first.context is not second.context and first.stats is not second.stats and first.context.cache is not second.context.cache
    assert not first.context.stopped() and second.context.stopped()
    configured = Explainer.from_pretrained(str(tiny_llama_dir), engine_options={"max_batch_tokens": 512, "max_batch_size": 3})
    assert (configured.engine.max_batch_tokens, configured.engine.max_batch_size) == (512, 3)
    assert [f.value for f in qa(configured, levels=("document",), method="exact").levels[0].features] == pytest.approx(
        [f.value for f in qa(explainer, levels=("document",), method="exact").levels[0].features], abs=1e-5
    )


def test_a_passed_deadline_cancels_the_request(tiny_explainer):
    import time

    with pytest.raises(Cancelled):
        qa(tiny_explainer, levels=("document",), deadline=time.monotonic() - 1)
    assert qa(tiny_explainer, levels=("document",), deadline=time.monotonic() + 600).answer == "Paris"


def test_each_request_reports_its_own_costs_unless_the_explainer_shares_a_cache_scope(tiny_explainer):
    from longshap.hierarchy.engines import CacheScope

    options = {"levels": ("document", "sentence"), "thresholds": 0.0, "budget": 30, "seed": 5}
    first, again = qa(tiny_explainer, **options), qa(tiny_explainer, **options)
    names = ("evaluations", "forward_tokens", "reused_tokens", "cached_tokens", "forward_passes")
    assert {n: again.stats[n] for n in names} == {n: first.stats[n] for n in names}  # nothing carried over between requests
    shared = Explainer(tiny_explainer.engine, cache_scope=CacheScope())
    warm, reusing = qa(shared, **options), qa(shared, **options)
    assert warm.stats["forward_tokens"] == first.stats["forward_tokens"]
    assert reusing.stats["forward_tokens"] < warm.stats["forward_tokens"] and reusing.stats["cached_tokens"] > warm.stats["cached_tokens"]
    values = lambda r: [f.value for level in r.levels for f in level.features]  # noqa: E731
    np.testing.assert_allclose(values(reusing), values(first), atol=1e-4)
