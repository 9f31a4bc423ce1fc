"""Operator limits on a request's size, whole text and what one evaluation costs, checked before it is queued.

All of them live here: documents, budget and candidates (on the engine's request),
every text field and the cost of one evaluation (on the wire message).

Every text field counts. The model reads the rendered prompt plus the scored
continuation on every evaluation, so the bound is on that worst case: the prompt's
text (the classification instruction with `{labels}` filled in), the longest
continuation (target, label or candidate), and the placeholder once per removable
unit (a word at the finest level, or a whole document). Continuations are scored one
row each, so the labels' count is capped too. With these bounds the work of one
request is at most (max_characters) x (evaluations) x (labels or candidates).
"""
from __future__ import annotations

from typing import Iterable

from longshap.hierarchy.prompt import DEFAULT_CLASSIFICATION_INSTRUCTION, DEFAULT_QA_INSTRUCTION, fill_template
from longshap.proto.wire import pb
from longshap.server.config import Limits
from longshap.server.errors import invalid
from longshap.hierarchy import request as rules


def check_engine_limits(request: rules.ExplainRequest, limits: Limits, prompt_field: str, candidates: list[str] | None = None) -> None:
    """Documents, budget and (for a rerank) candidates within the operator's limits."""
    if len(request.documents) > limits.max_documents:
        raise invalid(f"{prompt_field}.documents: {len(request.documents)} documents, the limit is {limits.max_documents}")
    if request.budget is not None and request.budget > limits.max_budget:
        raise invalid(f"budget: must be an integer in 1..{limits.max_budget}, got {request.budget}")
    if candidates is not None and len(candidates) > limits.max_candidates:
        raise invalid(f"candidates: {len(candidates)} candidates, the limit is {limits.max_candidates}")


def check_field_lengths(fields: Iterable[tuple[str, str]], limits: Limits) -> None:
    """Each short field (question, title, instruction, target, placeholder, label, candidate) within its own limit."""
    for name, text in fields:
        if len(text) > limits.max_field_characters:
            raise invalid(f"{name}: {len(text)} characters, the limit is {limits.max_field_characters}")


def check_cost(prompt_name: str, prompt_characters: int, texts: Iterable[str], placeholder: str, continuations: Iterable[str], limits: Limits) -> None:
    """The characters one evaluation can read, worst case, within max_characters."""
    texts = list(texts)
    removable_units = sum(len(text.split()) + 1 for text in texts)
    longest = max((len(c) for c in continuations), default=0)
    worst = prompt_characters + len(placeholder) * removable_units + longest
    if worst > limits.max_characters:
        detail = f" (placeholder of {len(placeholder)} x {removable_units} removable units)" if placeholder else ""
        raise invalid(f"{prompt_name}: {worst} characters per evaluation{detail}, the limit is {limits.max_characters}")


def _qa_fields(prompt: pb.QAPrompt, name: str) -> list[tuple[str, str]]:
    fields = [(f"{name}.question", prompt.question), (f"{name}.instruction", prompt.instruction)]
    return fields + [(f"{name}.documents[{i}].title", d.title) for i, d in enumerate(prompt.documents)]


def _qa_characters(prompt: pb.QAPrompt) -> int:
    return len(prompt.question) + len(prompt.instruction or DEFAULT_QA_INSTRUCTION) + sum(len(d.text) + len(d.title) for d in prompt.documents)


def check_explain_limits(request: pb.ExplainRequest, limits: Limits) -> None:
    """Every text field of an ExplainRequest and its worst-case cost within the operator limits."""
    placeholder = request.placeholder if request.HasField("placeholder") else ""
    target = [request.target] if request.HasField("target") else []
    extra = [("placeholder", placeholder), *(("target", t) for t in target)]
    if request.WhichOneof("prompt") == "qa":
        prompt = request.qa
        check_field_lengths(_qa_fields(prompt, "qa") + extra, limits)
        check_cost("qa", _qa_characters(prompt), [d.text for d in prompt.documents], placeholder, target, limits)
        return
    prompt = request.classification
    labels = list(prompt.labels)
    if len(labels) > limits.max_labels:
        raise invalid(f"classification.labels: {len(labels)} labels, the limit is {limits.max_labels}")
    labelled = [(f"classification.labels[{i}]", label) for i, label in enumerate(labels)]
    check_field_lengths([("classification.instruction", prompt.instruction), *labelled, *extra], limits)
    try:
        instruction = fill_template(prompt.instruction or DEFAULT_CLASSIFICATION_INSTRUCTION, {"labels": ", ".join(labels)}, "classification.instruction")
    except ValueError as error:
        raise invalid(str(error)) from None
    check_cost("classification", len(prompt.text) + len(instruction), [prompt.text], placeholder, labels, limits)


def check_rerank_limits(request: pb.RerankRequest, limits: Limits) -> None:
    """Every text field of a RerankRequest and the worst-case cost of one candidate's evaluation."""
    candidates = list(request.candidates)
    named = [(f"candidates[{i}]", c) for i, c in enumerate(candidates)]
    check_field_lengths(_qa_fields(request.prompt, "prompt") + named, limits)
    check_cost("prompt", _qa_characters(request.prompt), [d.text for d in request.prompt.documents], "", candidates, limits)
