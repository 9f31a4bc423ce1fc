"""The engine's request rules: checked with no model, at the call, each error naming its field."""
from __future__ import annotations

import subprocess
import sys

import pytest

from longshap.hierarchy.request import DEFAULT_MAX_EXPANDED, DEFAULT_THRESHOLDS, ExplainRequest, RequestError, check_candidates
from longshap.hierarchy.segmentation import Document

QA = {"question": "Who?", "documents": [{"title": "t", "text": "Paris is in France."}]}


def test_defaults_are_filled_in_for_qa_and_classification():
    qa = ExplainRequest.build(**QA)
    assert (qa.levels, qa.method, qa.mode, qa.value, qa.max_new_tokens) == (("document", "sentence", "word"), "auto", "owen", "logprob", 20)
    assert qa.documents == (Document("Paris is in France.", "t"),) and not qa.classification
    assert dict(qa.thresholds) == DEFAULT_THRESHOLDS and dict(qa.max_expanded) == DEFAULT_MAX_EXPANDED
    classification = ExplainRequest.build(text="good", labels=["neg", "pos"])
    assert classification.classification and classification.levels == ("word",) and classification.value == "label"


def test_per_level_options_take_a_number_a_mapping_or_one_value_per_level():
    assert ExplainRequest.build(**QA, thresholds=0.3).thresholds["sentence"] == 0.3
    by_name = ExplainRequest.build(**QA, thresholds={"word": 0.5})
    assert by_name.thresholds["word"] == 0.5 and by_name.thresholds["document"] == DEFAULT_THRESHOLDS["document"]
    aligned = ExplainRequest.build(**QA, levels=["document", "sentence"], max_expanded=[1, None])
    assert aligned.max_expanded["document"] == 1 and aligned.max_expanded["sentence"] is None


@pytest.mark.parametrize(
    "options, field",
    [
        ({"question": " "}, "question"),
        ({"documents": []}, "documents"),
        ({"documents": "just a string"}, "documents"),
        ({"documents": [{"text": ""}]}, "documents[0].text"),
        ({"documents": [{"text": "a"}, {"text": "b", "title": 3}]}, "documents[1].title"),
        ({"documents": [{"text": "a"}, 7]}, "documents[1]"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**63}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"budget": True}, "budget"),
        ({"thresholds": [0.1]}, "thresholds"),
        ({"thresholds": {"word": True}}, "thresholds[word]"),
        ({"thresholds": {"paragraph": 0.1}}, "thresholds[paragraph]"),
        ({"max_expanded": {"word": 1.5}}, "max_expanded[word]"),
        ({"levels": ["sentence", "document"]}, "levels"),
        ({"target_stderr": float("inf")}, "target_stderr"),
        ({"max_new_tokens": 513}, "max_new_tokens"),
        ({"speculative": "yes"}, "speculative"),
        ({"instruction": 5}, "instruction"),
        ({"placeholder": b"[x]"}, "placeholder"),
        ({"method": "magic"}, "method"),
        ({"text": "x"}, "prompt"),
        ({"confidence": 1.5}, "confidence"),
        ({"total_budget": 0}, "total_budget"),
        ({"adaptive": "yes"}, "adaptive"),
        ({"baseline": "mean"}, "baseline"),
        ({"method": "integrated_gradients", "value": "answers"}, "value"),
    ],
)
def test_bad_options_name_their_field(options, field):
    with pytest.raises(RequestError) as error:
        ExplainRequest.build(**{**QA, **options})
    assert error.value.field == field and str(error.value).startswith(f"{field}: ")


def test_a_classification_instruction_is_a_template_not_a_format_string():
    assert ExplainRequest.build(text="x", labels=["a", "b"], instruction="Pick {labels} {{ok}}").instruction == "Pick {labels} {{ok}}"
    for bad in ("{labels.__class__}", "{0}", "{labels:x>20000}"):
        with pytest.raises(RequestError, match="^instruction: "):
            ExplainRequest.build(text="x", labels=["a", "b"], instruction=bad)


def test_a_request_error_is_a_value_error():
    """Callers that catch ValueError keep working; servers tell RequestError apart from model failures."""
    assert issubclass(RequestError, ValueError)


def test_candidates_must_be_non_empty_and_distinct():
    assert check_candidates(["a", "b"]) == ["a", "b"]
    for bad in ([], "ab", ["a", " "], ["a", "a "]):
        with pytest.raises(RequestError, match="^candidates: "):
            check_candidates(bad)


def test_explain_stream_checks_the_request_before_the_first_event(tiny_explainer):
    """A generator would only check once consumed; a server must refuse before queueing."""
    with pytest.raises(RequestError, match="^budget: "):
        tiny_explainer.explain_stream(**QA, budget=0)
    with pytest.raises(TypeError):
        tiny_explainer.explain_stream(ExplainRequest.build(**QA), budget=3)


def test_the_rules_and_the_cli_need_no_torch():
    """Checking a request, importing the engine's names and the CLI's --help stay light: torch comes with a model."""
    code = (
        "import sys; from longshap.hierarchy import Explainer, estimate; import longshap.client.cli, longshap.server.app; "
        "from longshap.hierarchy.request import ExplainRequest; ExplainRequest.build(question='q', documents=['d']); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
