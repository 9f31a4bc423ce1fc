"""kv_mode blend through the explainer: the self-check, its fallback, what a request may ask and what engines may serve it."""
from __future__ import annotations

import math

import pytest

from longshap.hierarchy import Explainer
from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.request import ExplainRequest

DOCUMENTS = [
    {"title": "Paris", "text": "Paris is the capital of France. It is on the Seine."},
    {"title": "Berlin", "text": "Berlin is the capital of Germany. Dr. Smith lives in the U.S. now."},
    {"title": "Fox", "text": "The quick brown fox jumps over the lazy dog 1998."},
]
QA = {"question": "What is the capital of France?", "documents": DOCUMENTS, "target": "Paris", "budget": 12, "seed": 1}


def _values(explanation) -> list[list[float]]:
    return [[f.value for f in level.features] for level in explanation.levels]


@pytest.fixture(scope="module", params=["llama", "gemma3"])
def explainer(request):
    return Explainer.from_pretrained(str(request.getfixturevalue("tiny_llama_dir" if request.param == "llama" else "tiny_gemma_dir")))


def test_blend_recomputing_everything_gives_the_exact_explanation_at_every_level(explainer):
    exact = explainer.explain(**QA)
    blended = explainer.explain(**QA, kv_mode="blend", blend_recompute=1.0)
    assert blended.self_check == {
        "coalitions": 6, "max_difference": pytest.approx(0, abs=1e-3), "mean_difference": pytest.approx(0, abs=1e-3),
        "tolerance": 0.1, "recompute": 1.0, "fallback": False, "reason": "",
    }
    assert exact.self_check is None
    for got, want in zip(_values(blended), _values(exact), strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert blended.stats["blended_rows"] > 0 and exact.stats["blended_rows"] == 0
    assert (blended.full_value, blended.empty_value) == pytest.approx((exact.full_value, exact.empty_value), abs=1e-5)


def test_a_blend_over_the_tolerance_falls_back_to_exact_and_says_so(explainer):
    exact = explainer.explain(**QA)
    result = explainer.explain(**QA, kv_mode="blend", blend_recompute=0.0, blend_tolerance=0.0)
    check = result.self_check
    assert check["fallback"] and check["max_difference"] > 0 and "over the tolerance" in check["reason"]
    assert check["mean_difference"] <= check["max_difference"]
    for got, want in zip(_values(result), _values(exact), strict=True):  # the same model calls, batched differently
        assert got == pytest.approx(want, abs=1e-6)
    # Every coalition of three documents is valued anyway: the exact checks are reused, the blended ones are extra.
    assert result.stats["evaluations"] == exact.stats["evaluations"] + check["coalitions"]


def test_a_blend_within_the_tolerance_is_kept_and_charged(explainer):
    loose = explainer.explain(**QA, kv_mode="blend", blend_recompute=0.0, blend_tolerance=1e6)
    assert not loose.self_check["fallback"] and loose.self_check["max_difference"] < 1e6
    assert loose.stats["blended_rows"] >= loose.stats["coalitions"] - loose.self_check["coalitions"]


def test_the_number_of_checked_coalitions_is_the_request_s(explainer):
    assert explainer.explain(**QA, kv_mode="blend", blend_checks=0, levels=["document"]).self_check["coalitions"] == 2
    # Three documents have 6 coalitions besides all and none: asking for more checks them all.
    assert explainer.explain(**QA, kv_mode="blend", blend_checks=50, levels=["document"]).self_check["coalitions"] == 8


def test_one_document_has_nothing_to_blend(explainer):
    result = explainer.explain(**{**QA, "documents": DOCUMENTS[:1]}, kv_mode="blend")
    assert result.self_check["fallback"] and "single document" in result.self_check["reason"]
    assert math.isnan(result.self_check["max_difference"])
    assert result.to_dict()["self_check"]["max_difference"] is None  # unknown in JSON, not a number


@pytest.mark.parametrize("options, message", [
    ({"text": "a charming journey", "labels": ["negative", "positive"]}, "single passage"),
    ({**QA, "value": "answers"}, "the answers value decodes"),
    ({**QA, "method": "saliency"}, "gradient method"),
    ({**QA, "blend_recompute": 1.5}, "blend_recompute"),
    ({**QA, "blend_checks": -1}, "blend_checks"),
    ({**QA, "blend_tolerance": -0.1}, "blend_tolerance"),
])
def test_requests_blend_cannot_serve_are_refused_by_name(options, message):
    with pytest.raises(RequestError, match=message):
        ExplainRequest.build(**options, kv_mode="blend")


def test_an_unknown_kv_mode_is_refused():
    with pytest.raises(RequestError, match="kv_mode"):
        ExplainRequest.build(**QA, kv_mode="fast")


def test_an_engine_without_blend_is_refused_before_any_work(explainer):
    class NoBlend:
        def __init__(self, inner) -> None:
            self.inner, self.capabilities = inner, inner.capabilities - {"blend"}
            self.architecture, self.max_batch_tokens = inner.architecture, inner.max_batch_tokens

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with pytest.raises(RequestError, match="cannot blend"):
        Explainer(NoBlend(explainer.engine)).explain_stream(**QA, kv_mode="blend")


def test_blend_composes_with_adaptive_allocation(explainer):
    options = {**QA, "budget": 24, "adaptive": True}
    exact = explainer.explain(**options)
    blended = explainer.explain(**options, kv_mode="blend", blend_recompute=1.0)
    assert not blended.self_check["fallback"]
    for got, want in zip(_values(blended), _values(exact), strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert [level.unsettled for level in blended.levels] == [level.unsettled for level in exact.levels]
