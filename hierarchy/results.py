"""Explanation results and stream events; `to_dict()` gives the public JSON schema.

The schema is strict JSON: a number that is not finite becomes null (a standard error
that does not apply, as for gradient methods, or that the data cannot bound), since
NaN and Infinity are not JSON and strict parsers (JavaScript, Go, serde) refuse them.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float, at any depth, replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


@dataclass
class Feature:
    id: str
    parent: str
    text: str
    start: int
    end: int
    value: float
    stderr: float
    expanded: bool
    doc: int
    title: str = ""
    token_start: int | None = None
    token_end: int | None = None
    values_by_answer: dict[str, float] | None = None
    values_by_token: list[float] | None = None
    """logprob/probability: the value split over the answer's tokens (Explanation.answer_tokens); sums to `value`."""


@dataclass
class Level:
    level: str
    features: list[Feature]
    evaluations: int
    threshold: float
    method: str
    wall_seconds: float
    forward_tokens: int = 0
    reused_tokens: int = 0
    unsettled: list[str] | None = None
    """Adaptive runs: ids of units whose expansion decision or top-k rank the data could not settle
    at the requested confidence before the budget ran out (empty: all settled). None otherwise."""

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


@dataclass
class Explanation:
    answer: str
    levels: list[Level]
    stats: dict
    value_function: str
    mode: str
    total_effect: float
    full_value: float
    empty_value: float
    label_probabilities: dict[str, float] | None = None
    answers: list[dict] | None = None
    answer_tokens: list[str] | None = None
    extras: dict = field(default_factory=dict)
    self_check: dict | None = None
    """kv_mode blend: how blended values compared with the exact model's (`hierarchy.kv_blend.SelfCheck`)."""

    def level(self, name: str) -> Level:
        for level in self.levels:
            if level.level == name:
                return level
        raise KeyError(f"no {name!r} level in this explanation")

    def to_dict(self) -> dict:
        return json_safe(asdict(self))


@dataclass
class AnswerEvent:
    """The answer being explained (and label probabilities), known before any attribution."""

    answer: str
    source: str
    label_probabilities: dict[str, float] | None = None
    kind: str = "answer"


@dataclass
class LevelStartEvent:
    """The units of a level, known before their values: clients can draw the tree at once."""

    level: str
    features: list[Feature]
    planned_evaluations: int
    kind: str = "level_start"


@dataclass
class ProgressEvent:
    level: str
    evaluations: int
    planned_evaluations: int
    values: dict[str, float]
    stderr: dict[str, float]
    kind: str = "progress"


@dataclass
class LevelEvent:
    result: Level
    kind: str = "level"


@dataclass
class DoneEvent:
    explanation: Explanation
    kind: str = "done"
