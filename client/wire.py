"""The wire format shared by server and client: generated messages and conversions.

Engine events become `ExplainEvent` messages on the server (and in `--local` mode),
and a client turns a stream of them back into the engine's JSON schema, so both
paths render through one code path.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterable, Mapping

GENERATED = Path(__file__).resolve().parent.parent / "proto" / "gen"
if GENERATED.is_dir() and str(GENERATED) not in sys.path:
    sys.path.insert(0, str(GENERATED))
try:
    from longshap.v1 import explainer_pb2 as pb
    from longshap.v1 import explainer_pb2_grpc as pb_grpc
except ImportError as error:  # pragma: no cover - exercised only on a broken install
    raise ImportError(f"the generated gRPC code is missing from {GENERATED}: run make install (or python proto/build.py)") from error

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Explainer"].full_name
STAT_FIELDS = ("evaluations", "coalitions", "forward_tokens", "forward_passes", "decode_steps", "wall_seconds")

__all__ = ["SERVICE_NAME", "ExplanationBuilder", "collect", "event_to_proto", "feature_to_dict", "pb", "pb_grpc", "summary_proto"]


def _feature_to_proto(feature: Any) -> pb.Feature:
    return pb.Feature(
        id=feature.id, parent=feature.parent, text=feature.text, start=feature.start, end=feature.end,
        value=feature.value, stderr=feature.stderr, expanded=feature.expanded, doc=feature.doc, title=feature.title,
        token_start=feature.token_start, token_end=feature.token_end, values_by_answer=feature.values_by_answer or {},
    )


def summary_proto(stats: Mapping[str, float]) -> pb.Summary:
    """The engine's stats dict as a Summary (typed fields for the known ones, all of them in `stats`)."""
    known = {name: stats[name] for name in STAT_FIELDS if name in stats}
    return pb.Summary(
        **known, cache_hits=stats.get("cache_hits"), stats={k: float(v) for k, v in stats.items()},
    )


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
        )))
    if event.kind == "done":
        result = event.explanation
        return pb.ExplainEvent(done=pb.DoneEvent(
            answer=result.answer, value_function=result.value_function, mode=result.mode, total_effect=result.total_effect,
            full_value=result.full_value, empty_value=result.empty_value, label_probabilities=result.label_probabilities or {},
            answers=[pb.AnswerShare(answer=a["answer"], share=a["share"]) for a in result.answers or []],
            summary=summary_proto(result.stats), request_id=request_id,
        ))
    raise TypeError(f"unknown engine event {event!r}")


def feature_to_dict(feature: pb.Feature) -> dict:
    """A Feature message as the engine's JSON feature."""
    return {
        "id": feature.id, "parent": feature.parent, "text": feature.text, "start": feature.start, "end": feature.end,
        "value": feature.value, "stderr": feature.stderr, "expanded": feature.expanded, "doc": feature.doc, "title": feature.title,
        "token_start": feature.token_start if feature.HasField("token_start") else None,
        "token_end": feature.token_end if feature.HasField("token_end") else None,
        "values_by_answer": dict(feature.values_by_answer) or None,
    }


def _stats_dict(summary: pb.Summary) -> dict:
    stats = {name: value for name, value in summary.stats.items()}
    for name in STAT_FIELDS:
        stats[name] = getattr(summary, name)
    if summary.HasField("cache_hits"):
        stats["cache_hits"] = summary.cache_hits
    return stats


class ExplanationBuilder:
    """Collects a stream of ExplainEvent messages into the engine's Explanation JSON (`to_dict()` schema)."""

    def __init__(self) -> None:
        self.levels: list[dict] = []
        self.done: pb.DoneEvent | None = None

    def add(self, event: pb.ExplainEvent) -> None:
        kind = event.WhichOneof("event")
        if kind == "level":
            level = event.level.level
            self.levels.append({
                "level": level.level, "features": [feature_to_dict(f) for f in level.features], "evaluations": level.evaluations,
                "threshold": level.threshold, "method": level.method, "wall_seconds": level.wall_seconds,
            })
        elif kind == "done":
            self.done = event.done

    def result(self) -> dict:
        if self.done is None:
            raise RuntimeError("the explanation stream ended without its final event")
        done = self.done
        return {
            "answer": done.answer, "levels": self.levels, "stats": _stats_dict(done.summary), "value_function": done.value_function,
            "mode": done.mode, "total_effect": done.total_effect, "full_value": done.full_value, "empty_value": done.empty_value,
            "label_probabilities": dict(done.label_probabilities) or None,
            "answers": [{"answer": a.answer, "share": a.share} for a in done.answers] or None, "extras": {},
        }


def collect(events: Iterable[pb.ExplainEvent]) -> dict:
    """The Explanation JSON of a whole event stream."""
    builder = ExplanationBuilder()
    for event in events:
        builder.add(event)
    return builder.result()
