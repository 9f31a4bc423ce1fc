"""The rules of one explanation request, checked with no model before any work is queued.

Every caller (the Python API, the gRPC server, the CLI's --local mode) builds an
`ExplainRequest` here, from the options `hierarchy.options` declares (their defaults,
ranges and choices). A refused request raises `RequestError`, which names the field;
a failure of the model later on is never a `RequestError`, so servers can tell the
user's mistakes from their own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from longshap.hierarchy.allocation import Allocation
from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.gradients import GRADIENT_METHODS, check_gradient_options
from longshap.hierarchy.options import CLASSIFICATION_LEVELS, DEFAULT_MAX_EXPANDED, DEFAULT_THRESHOLDS, OPTIONS, QA_LEVELS, Option
from longshap.hierarchy.prompt import check_labels, check_text, fill_template
from longshap.hierarchy.segmentation import LEVELS, Document


def _default(name: str) -> Any:
    return OPTIONS[name].default


_OWN_RULES = ("target", "levels", "value", "thresholds", "max_expanded", "baseline")
"""Options checked below rather than by their declaration alone: defaults by prompt kind, per-level values,
and baselines, which the gradient methods judge first (naming the ones they take)."""


@dataclass(frozen=True)
class ExplainRequest:
    """One validated explanation request: a QA prompt (question, documents) or a classification one (text, labels)."""

    question: str | None = None
    documents: tuple[Document, ...] = ()
    text: str | None = None
    labels: tuple[str, ...] = ()
    instruction: str | None = None
    placeholder: str | None = None
    target: str | None = None
    levels: tuple[str, ...] = QA_LEVELS
    method: str = _default("method")
    budget: int | None = None
    seed: int = _default("seed")
    mode: str = _default("mode")
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    max_expanded: Mapping[str, int | None] = field(default_factory=lambda: dict(DEFAULT_MAX_EXPANDED))
    value: str = _default("value")
    target_stderr: float | None = None
    max_new_tokens: int = _default("max_new_tokens")
    speculative: bool = False
    baseline: str = _default("baseline")
    """Integrated Gradients' baseline embedding: zero | pad."""
    allocation: Allocation | None = None
    """Adaptive allocation (asked for with adaptive=True or a total_budget); None spends every level's budget."""
    kv_mode: str = _default("kv_mode")
    blend_recompute: float = _default("blend_recompute")
    blend_checks: int = _default("blend_checks")
    blend_tolerance: float = _default("blend_tolerance")

    @property
    def classification(self) -> bool:
        return self.text is not None

    @classmethod
    def build(
        cls,
        question: str | None = None,
        documents: Sequence | None = None,
        text: str | None = None,
        labels: Sequence[str] | None = None,
        instruction: str | None = None,
        **options: Any,
    ) -> ExplainRequest:
        """Check the prompt and every option of `hierarchy.options.OPTIONS`, filling in defaults; raise RequestError naming the first bad field.

        Per-level options take a number (every level), a mapping by level name or a
        sequence aligned with `levels`.
        """
        for name in options:
            if name not in OPTIONS:
                raise TypeError(f"ExplainRequest.build() got an unexpected keyword argument {name!r}")
        given = {name: options.get(name) for name in OPTIONS}
        classification = text is not None or labels is not None
        if classification and (question is not None or documents is not None):
            raise RequestError("prompt", "give either question and documents (QA) or text and labels (classification), not both")
        if classification:
            prompt: dict[str, Any] = {"text": check_text(text, "text"), "labels": check_labels(labels)}
        else:
            if question is None or documents is None:
                raise RequestError("prompt", "QA needs question and documents (or give text and labels for classification)")
            prompt = {"question": check_text(question, "question"), "documents": _documents(documents)}
        level_names = _levels(given["levels"], CLASSIFICATION_LEVELS if classification else QA_LEVELS)
        resolved = {name: option.resolve(given[name]) for name, option in OPTIONS.items() if name not in _OWN_RULES}
        value = _value(given["value"], classification)
        if classification and instruction:
            fill_template(_optional_string(instruction, "instruction") or "", {"labels": ", ".join(prompt["labels"])}, "instruction")
        if resolved["method"] in GRADIENT_METHODS:
            check_gradient_options(resolved["method"], value, given["baseline"] or _default("baseline"), resolved["budget"])
        adaptive, confidence, total_budget = (resolved.pop(name) for name in ("adaptive", "confidence", "total_budget"))
        if resolved["kv_mode"] == "blend":
            _check_blend(classification, value, resolved["method"])
        return cls(
            **prompt,
            **resolved,
            instruction=_optional_text(instruction, "instruction"),
            target=_target(given["target"], prompt.get("labels")),
            levels=level_names,
            thresholds=_per_level(given["thresholds"], OPTIONS["thresholds"], level_names),
            max_expanded=_per_level(given["max_expanded"], OPTIONS["max_expanded"], level_names),
            value=value,
            baseline=OPTIONS["baseline"].resolve(given["baseline"]),
            allocation=Allocation(confidence, total_budget) if adaptive or total_budget is not None else None,
        )


def _check_blend(classification: bool, value: str, method: str) -> None:
    """kv_mode blend caches documents and scores teacher-forced values: refuse what it cannot serve, by name."""
    if classification:
        raise RequestError("kv_mode", "blend caches each document's states; a classification text is a single passage (use exact)")
    if value == "answers":
        raise RequestError("kv_mode", "blend scores teacher-forced values (logprob, probability); the answers value decodes (use exact)")
    if method in GRADIENT_METHODS:
        raise RequestError("kv_mode", f"blend applies to coalition estimators, not to the gradient method {method}")


def check_candidates(candidates: Sequence[str]) -> list[str]:
    """Rerank's candidate answers: at least one, each non-empty, all distinct."""
    if isinstance(candidates, str) or not candidates:
        raise RequestError("candidates", "at least one candidate answer is required")
    if any(not isinstance(c, str) or not c.strip() for c in candidates):
        raise RequestError("candidates", "answers must be non-empty strings")
    if len({c.strip() for c in candidates}) != len(candidates):
        raise RequestError("candidates", f"answers must be distinct, got {list(candidates)}")
    return list(candidates)


def _optional_string(value: object, name: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise RequestError(name, f"must be a string, got {type(value).__name__}")
    return value


def _optional_text(value: object, name: str) -> str | None:
    """An optional text where empty means 'use the default'."""
    return _optional_string(value, name) or None


def _documents(documents: object) -> tuple[Document, ...]:
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence) or not documents:
        raise RequestError("documents", "at least one document is required (a list of {'title', 'text'})")
    parsed = []
    text: object
    title: object
    for index, doc in enumerate(documents):
        if isinstance(doc, Document):
            text, title = doc.text, doc.title
        elif isinstance(doc, str):
            text, title = doc, ""
        elif isinstance(doc, Mapping):
            text, title = doc.get("text"), doc.get("title", "") or ""
        else:
            raise RequestError(f"documents[{index}]", f"expected a dict with 'text' (and optional 'title'), got {type(doc).__name__}")
        text = check_text(text, f"documents[{index}].text")
        if not isinstance(title, str):
            raise RequestError(f"documents[{index}].title", "must be a string")
        parsed.append(doc if isinstance(doc, Document) else Document(text, title))
    return tuple(parsed)


def _target(target: object, labels: tuple[str, ...] | None) -> str | None:
    if target is None:
        return None
    if not isinstance(target, str) or not target.strip():
        raise RequestError("target", "must be a non-empty string (or omit it to explain the model's own output)")
    if labels is not None and target not in labels:
        raise RequestError("target", f"{target!r} is not one of the labels {list(labels)}")
    return target if labels is not None else target.strip()


def _levels(levels: Sequence[str] | str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    chosen = tuple(default if levels is None else ([levels] if isinstance(levels, str) else levels))
    if not chosen:
        raise RequestError("levels", "at least one level is required")
    for level in chosen:
        if level not in LEVELS:
            raise RequestError("levels", f"unknown level {level!r}; use {LEVELS}")
    if len(set(chosen)) != len(chosen) or ("word" in chosen and "token" in chosen):
        raise RequestError("levels", f"each level at most once, and word or token but not both; got {chosen}")
    order = [LEVELS.index("word" if level == "token" else level) for level in chosen]
    if order != sorted(order):
        raise RequestError("levels", f"must go from coarse to fine (document, sentence, word|token); got {chosen}")
    return chosen


def _per_level(given: object, option: Option, levels: Sequence[str]) -> dict:
    """A number (every level), a mapping by level name, or a sequence aligned with `levels`, over the option's defaults."""
    name = option.name
    values = dict(option.default)
    if given is None:
        pass
    elif isinstance(given, Mapping):
        for level in given:
            if level not in LEVELS:
                raise RequestError(f"{name}[{level}]", f"unknown level; use {LEVELS}")
        values.update(given)
    elif isinstance(given, (int, float)) and not isinstance(given, bool):
        values.update({level: given for level in LEVELS})
    elif isinstance(given, Sequence) and not isinstance(given, str):
        if len(given) != len(levels):
            raise RequestError(name, f"expected {len(levels)} values (one per level), got {len(given)}")
        values.update(zip(levels, given))
    else:
        raise RequestError(name, f"expected a number, a mapping by level or one value per level, got {given!r}")
    return {level: option.check(value, f"{name}[{level}]") for level, value in values.items()}


def _value(value: str | None, classification: bool) -> str:
    if classification:
        if value not in (None, "", "label"):
            raise RequestError("value", f"classification uses the 'label' value function, not {value!r}")
        return "label"
    if value == "label":
        raise RequestError("value", "'label' is for classification (text and labels)")
    return OPTIONS["value"].resolve(value)
