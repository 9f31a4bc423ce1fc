"""The wire format shared by server and client: generated messages and conversions.

Engine events become `ExplainEvent` messages on the server (and in `--local` mode),
so both paths render through one code path; the final event carries the engine's
own JSON, so clients get exactly its schema.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from google.protobuf.descriptor import FieldDescriptor

from longshap.proto import explainer_pb2 as pb
from longshap.proto import explainer_pb2_grpc as pb_grpc

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
PUSHBACK_KEY = "grpc-retry-pushback-ms"
"""gRPC's trailing metadata for when a refused call may be retried (sent with RESOURCE_EXHAUSTED)."""
STAT_FIELDS = ("evaluations", "coalitions", "forward_tokens", "reused_tokens", "forward_passes", "decode_steps", "wall_seconds")

__all__ = ["PUSHBACK_KEY", "SERVICE_NAME", "collect", "event_to_proto", "explain_options", "pb", "pb_grpc", "prompt_options", "rerank_to_proto", "summary_proto"]


def prompt_options(prompt: pb.QAPrompt | pb.ClassificationPrompt) -> dict:
    """A prompt message as the engine's keyword options (empty instruction means the default)."""
    if isinstance(prompt, pb.ClassificationPrompt):
        return {"text": prompt.text, "labels": list(prompt.labels), "instruction": prompt.instruction or None}
    return {
        "question": prompt.question,
        "documents": [{"title": d.title, "text": d.text} for d in prompt.documents],
        "instruction": prompt.instruction or None,
    }


def explain_options(request: pb.ExplainRequest) -> dict:
    """An ExplainRequest as the engine's keyword options: unset fields become None, so the engine's defaults apply.

    Every field but the model's name and the prompt is the engine's option of the same
    name (longshap.hierarchy.options). Pure conversion, no checks: the engine's request
    rules (longshap.hierarchy.request) judge the result.
    """
    kind = request.WhichOneof("prompt")
    options = prompt_options(getattr(request, kind)) if kind else {}
    prompt = request.DESCRIPTOR.oneofs_by_name["prompt"]
    for field in request.DESCRIPTOR.fields:
        if field.name != "model" and field.containing_oneof is not prompt:
            options[field.name] = _option(request, field)
    return options


def _option(request: pb.ExplainRequest, field: FieldDescriptor) -> Any:
    """One option field's value, or None where the message leaves it unset (an empty name or list counts as unset)."""
    value = getattr(request, field.name)
    if field.has_presence:
        return value if request.HasField(field.name) else None
    if field.is_repeated:
        return (dict(value) if field.message_type is not None else list(value)) or None
    return (value or None) if field.type == FieldDescriptor.TYPE_STRING else value


def _feature_to_proto(feature: Any) -> pb.Feature:
    return pb.Feature(
        id=feature.id, parent=feature.parent, text=feature.text, start=feature.start, end=feature.end,
        value=feature.value, stderr=feature.stderr, expanded=feature.expanded, doc=feature.doc, title=feature.title,
        token_start=feature.token_start, token_end=feature.token_end, values_by_answer=feature.values_by_answer or {},
        values_by_token=feature.values_by_token or [],
    )


def summary_proto(stats: Mapping[str, float]) -> pb.Summary:
    """The engine's stats dict as a Summary (typed fields for the known ones, all of them in `stats`)."""
    known: dict[str, Any] = {name: stats[name] for name in STAT_FIELDS if name in stats}
    return pb.Summary(**known, stats={k: float(v) for k, v in stats.items()})


def event_to_proto(event: Any, request_id: str = "") -> pb.ExplainEvent:
    """Convert one engine event (hierarchy.results) to its wire message."""
    if event.kind == "answer":
        return pb.ExplainEvent(answer=pb.AnswerEvent(answer=event.answer, source=event.source, label_probabilities=event.label_probabilities or {}))
    if event.kind == "level_start":
        return pb.ExplainEvent(level_start=pb.LevelStartEvent(
            level=event.level, features=[_feature_to_proto(f) for f in event.features], planned_evaluations=event.planned_evaluations,
        ))
    if event.kind == "progress":
        estimates = [pb.Estimate(id=unit, value=value, stderr=event.stderr[unit]) for unit, value in event.values.items()]
        return pb.ExplainEvent(progress=pb.ProgressEvent(
            level=event.level, evaluations=event.evaluations, planned_evaluations=event.planned_evaluations, estimates=estimates,
        ))
    if event.kind == "level":
        level = event.result
        return pb.ExplainEvent(level=pb.LevelEvent(level=pb.Level(
            level=level.level, features=[_feature_to_proto(f) for f in level.features], evaluations=level.evaluations,
            threshold=level.threshold, method=level.method, wall_seconds=level.wall_seconds,
            expanded=[f.id for f in level.features if f.expanded],
            forward_tokens=getattr(level, "forward_tokens", 0), reused_tokens=getattr(level, "reused_tokens", 0),
            unsettled=level.unsettled or [],
        )))
    if event.kind == "done":
        result = event.explanation
        return pb.ExplainEvent(done=pb.DoneEvent(
            answer=result.answer, value_function=result.value_function, mode=result.mode, total_effect=result.total_effect,
            full_value=result.full_value, empty_value=result.empty_value, label_probabilities=result.label_probabilities or {},
            answers=[pb.AnswerShare(answer=a["answer"], share=a["share"]) for a in result.answers or []],
            summary=summary_proto(result.stats), request_id=request_id, answer_tokens=result.answer_tokens or [],
            explanation_json=json.dumps(result.to_dict(), ensure_ascii=False, allow_nan=False),
            self_check=pb.SelfCheck(**result.self_check) if result.self_check else None,
        ))
    raise TypeError(f"unknown engine event {event!r}")


def rerank_to_proto(result: Any) -> pb.RerankResponse:
    """The engine's Reranking (hierarchy.rerank) as its wire message."""
    return pb.RerankResponse(
        answers=[
            pb.RankedAnswer(answer=a.answer, total_effect=a.total_effect, full_value=a.full_value, empty_value=a.empty_value)
            for a in result.answers
        ],
        documents=[pb.RankedDocument(index=d.index, title=d.title, value=d.value, stderr=d.stderr) for d in result.documents],
        summary=summary_proto(result.stats),
    )


def collect(events: Iterable[pb.ExplainEvent]) -> dict:
    """The engine's Explanation JSON from a whole event stream (its final event)."""
    for event in events:
        if event.HasField("done"):
            return json.loads(event.done.explanation_json)
    raise RuntimeError("the explanation stream ended without its final event")
