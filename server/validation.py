"""What the wire adds to the engine's request rules: operator limits, model names and field paths.

The engine's rules (longshap.hierarchy.request) judge every option; this module runs
them, then the operator limits (`server.limits`), before a request is queued, so a bad
request costs nothing, and reports errors under the request's own field paths
(`qa.documents[1].text`).
"""
from __future__ import annotations

from typing import Mapping

import grpc

from longshap.hierarchy import request as rules
from longshap.hierarchy.rerank import rerank_request
from longshap.proto.wire import explain_options, pb, prompt_options
from longshap.server.config import Limits
from longshap.server.errors import RequestError, invalid
from longshap.server.limits import check_engine_limits, check_explain_limits, check_rerank_limits

PROMPT_FIELDS = frozenset({"question", "documents", "text", "labels", "instruction"})
"""Engine options that live inside the request's prompt message."""


def resolve_model(name: str, served: Mapping[str, object], default: str) -> str:
    """The served model a request names (the default when empty); never a path."""
    if not name:
        return default
    if any(sep in name for sep in "/\\") or name.startswith((".", "~")):
        raise invalid(f"model: {name!r} looks like a path; name one of the served models {sorted(served)}")
    if name not in served:
        raise RequestError(grpc.StatusCode.NOT_FOUND, f"model: unknown model {name!r}; served models: {sorted(served)}")
    return name


def _wire_error(error: rules.RequestError, prompt_field: str) -> RequestError:
    """An engine error under the wire's path for its field (prompt options sit inside the prompt message)."""
    root = error.field.split("[", 1)[0].split(".", 1)[0]
    field = f"{prompt_field}.{error.field}" if root in PROMPT_FIELDS else error.field
    return invalid(f"{field}: {error.reason}")


def explain_request(message: pb.ExplainRequest, limits: Limits) -> rules.ExplainRequest:
    """The engine request an ExplainRequest message asks for, or a RequestError naming the bad field."""
    prompt_field = message.WhichOneof("prompt")
    if prompt_field is None:
        raise invalid("prompt: give qa (question and documents) or classification (text and labels)")
    try:
        request = rules.ExplainRequest.build(**explain_options(message))
    except rules.RequestError as error:
        raise _wire_error(error, prompt_field) from None
    check_engine_limits(request, limits, prompt_field)
    check_explain_limits(message, limits)
    return request


def rerank_arguments(message: pb.RerankRequest, limits: Limits) -> tuple[rules.ExplainRequest, list[str]]:
    """(the document-level engine request, candidates) for a Rerank message."""
    if not message.HasField("prompt"):
        raise invalid("prompt: a QA prompt (question and documents) is required")
    options = prompt_options(message.prompt)
    options.update(method=message.method or None, budget=message.budget if message.HasField("budget") else None, seed=message.seed)
    try:
        request, candidates = rerank_request(list(message.candidates), **options)
    except rules.RequestError as error:
        raise _wire_error(error, "prompt") from None
    check_engine_limits(request, limits, "prompt", candidates)
    check_rerank_limits(message, limits)
    return request, candidates
