"""The model work of one request, run the same way by the server's worker and the CLI's --local mode.

A job gets a checked engine request, hands what it produces to `emit` as it comes, and
polls `should_stop` (the client went away, the deadline passed) through the engine.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from longshap.hierarchy.rerank import rerank as rank_candidates
from longshap.proto.wire import rerank_to_proto

if TYPE_CHECKING:
    from longshap.hierarchy import Explainer
    from longshap.hierarchy.request import ExplainRequest


def explain(explainer: Explainer, request: ExplainRequest, emit: Callable[[Any], None], should_stop: Callable[[], bool]) -> None:
    """Emit the engine's events of one explanation: its progress and its stream, in order."""
    for event in explainer.explain_stream(request, on_progress=emit, should_stop=should_stop):
        emit(event)


def rerank(
    explainer: Explainer, request: ExplainRequest, candidates: Sequence[str], emit: Callable[[Any], None], should_stop: Callable[[], bool]
) -> None:
    """Emit the RerankResponse of `candidates` over the request's documents."""
    emit(rerank_to_proto(rank_candidates(explainer, request, candidates, should_stop)))
