"""Request checks done before any model work, so a bad request costs nothing and names its field.

The engine checks its own arguments too (its ValueErrors also become
INVALID_ARGUMENT); these checks cover what the wire adds: limits, model names,
proto defaults, NaN and other values the engine would only meet once queued.
"""
from __future__ import annotations

import math
from typing import Mapping

import grpc

from longshap.proto.wire import pb
from longshap.hierarchy.estimators import ESTIMATORS
from longshap.hierarchy.explainer import MAX_NEW_TOKENS
from longshap.hierarchy.segmentation import LEVELS
from longshap.hierarchy.subgames import MODES
from longshap.hierarchy.values import VALUE_FUNCTIONS
from longshap.server.config import Limits


class RequestError(Exception):
    """A request the server refuses, with the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def resolve_model(name: str, served: Mapping[str, object], default: str) -> str:
    """The served model a request names (the default when empty); never a path."""
    if not name:
        return default
    if any(sep in name for sep in "/\\") or name.startswith((".", "~")):
        raise invalid(f"model: {name!r} looks like a path; name one of the served models {sorted(served)}")
    if name not in served:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"model: unknown model {name!r}; served models: {sorted(served)}")
    return name


def _budget(request, limits: Limits, field: str = "budget") -> int | None:
    if not request.HasField("budget"):
        return None
    if not 1 <= request.budget <= limits.max_budget:
        raise invalid(f"{field}: must be an integer in 1..{limits.max_budget}, got {request.budget}")
    return request.budget


def _method(method: str) -> str:
    if method and method not in ESTIMATORS:
        raise invalid(f"method: unknown estimator {method!r}; use one of {sorted(ESTIMATORS)}")
    return method or "permutation"


def _qa(prompt: pb.QAPrompt, limits: Limits, field: str) -> dict:
    if not prompt.question.strip():
        raise invalid(f"{field}.question: must not be empty")
    if not prompt.documents:
        raise invalid(f"{field}.documents: at least one document is required")
    if len(prompt.documents) > limits.max_documents:
        raise invalid(f"{field}.documents: {len(prompt.documents)} documents, the limit is {limits.max_documents}")
    for index, doc in enumerate(prompt.documents):
        if not doc.text.strip():
            raise invalid(f"{field}.documents[{index}].text: must not be empty")
    return {
        "question": prompt.question,
        "documents": [{"title": d.title, "text": d.text} for d in prompt.documents],
        "instruction": prompt.instruction or None,
    }


def _classification(prompt: pb.ClassificationPrompt, limits: Limits) -> dict:
    if not prompt.text.strip():
        raise invalid("classification.text: must not be empty")
    labels = list(prompt.labels)
    if len(labels) < 2:
        raise invalid(f"classification.labels: at least two labels are required, got {len(labels)}")
    if any(not label.strip() for label in labels):
        raise invalid("classification.labels: labels must not be empty")
    if len(set(labels)) != len(labels):
        raise invalid(f"classification.labels: labels must be distinct, got {labels}")
    return {"text": prompt.text, "labels": labels, "instruction": prompt.instruction or None}


def _by_level(values: Mapping, field: str, valid) -> dict | None:
    for level, value in values.items():
        if level not in LEVELS:
            raise invalid(f"{field}[{level}]: unknown level; use {LEVELS}")
        if not valid(value):
            raise invalid(f"{field}[{level}]: must be a finite number >= 0, got {value!r}")
    return dict(values) or None


def explain_arguments(request: pb.ExplainRequest, limits: Limits) -> dict:
    """Keyword arguments for Explainer.explain_stream, or a RequestError naming the bad field."""
    kind = request.WhichOneof("prompt")
    if kind is None:
        raise invalid("prompt: give qa (question and documents) or classification (text and labels)")
    arguments = _qa(request.qa, limits, "qa") if kind == "qa" else _classification(request.classification, limits)
    for level in request.levels:
        if level not in LEVELS:
            raise invalid(f"levels: unknown level {level!r}; use {LEVELS}")
    if request.HasField("target") and not request.target.strip():
        raise invalid("target: must not be empty (omit it to explain the model's own answer)")
    if request.value and request.value not in VALUE_FUNCTIONS:
        raise invalid(f"value: unknown value function {request.value!r}; use one of {sorted(VALUE_FUNCTIONS)}")
    if request.mode and request.mode not in MODES:
        raise invalid(f"mode: must be one of {MODES}, got {request.mode!r}")
    if request.HasField("target_stderr") and not (math.isfinite(request.target_stderr) and request.target_stderr > 0):
        raise invalid(f"target_stderr: must be a positive finite number, got {request.target_stderr!r}")
    if request.HasField("max_new_tokens") and not 1 <= request.max_new_tokens <= MAX_NEW_TOKENS:
        raise invalid(f"max_new_tokens: must be in 1..{MAX_NEW_TOKENS}, got {request.max_new_tokens}")
    arguments.update(
        target=request.target if request.HasField("target") else None,
        levels=list(request.levels) or None,
        thresholds=_by_level(request.thresholds, "thresholds", lambda v: math.isfinite(v) and v >= 0),
        max_expanded=_by_level(request.max_expanded, "max_expanded", lambda v: v >= 0),
        method=_method(request.method),
        budget=_budget(request, limits),
        seed=request.seed,
        value=request.value or None,
        mode=request.mode or "owen",
        placeholder=request.placeholder if request.HasField("placeholder") else None,
        target_stderr=request.target_stderr if request.HasField("target_stderr") else None,
    )
    if request.HasField("max_new_tokens"):
        arguments["max_new_tokens"] = request.max_new_tokens
    return arguments


def rerank_arguments(request: pb.RerankRequest, limits: Limits) -> tuple[dict, list[str]]:
    """(shared explain arguments, candidates) for a Rerank request."""
    if not request.HasField("prompt"):
        raise invalid("prompt: a QA prompt (question and documents) is required")
    arguments = _qa(request.prompt, limits, "prompt")
    candidates = list(request.candidates)
    if not candidates:
        raise invalid("candidates: at least one candidate answer is required")
    if len(candidates) > limits.max_candidates:
        raise invalid(f"candidates: {len(candidates)} candidates, the limit is {limits.max_candidates}")
    if any(not c.strip() for c in candidates):
        raise invalid("candidates: answers must not be empty")
    if len({c.strip() for c in candidates}) != len(candidates):
        raise invalid(f"candidates: answers must be distinct, got {candidates}")
    arguments.update(method=_method(request.method), budget=_budget(request, limits), seed=request.seed)
    return arguments, candidates
