"""The rules of one explanation request, checked with no model before any work is queued.

Every caller (the Python API, the gRPC server, the CLI's --local mode) builds an
`ExplainRequest` here, so each option is defined and checked in one place. A refused
request raises `RequestError`, which names the field; a failure of the model later on
is never a `RequestError`, so servers can tell the user's mistakes from their own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from longshap.hierarchy.allocation import Allocation
from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.estimators import ESTIMATORS
from longshap.hierarchy.gradients import BASELINES, GRADIENT_METHODS, check_gradient_options
from longshap.hierarchy.prompt import check_labels, check_text, fill_template
from longshap.hierarchy.segmentation import LEVELS, Document
from longshap.hierarchy.subgames import MODES
from longshap.hierarchy.values import VALUE_FUNCTIONS

QA_LEVELS = ("document", "sentence", "word")
CLASSIFICATION_LEVELS = ("word",)
DEFAULT_METHOD = "auto"
DEFAULT_MODE = "owen"
DEFAULT_THRESHOLDS = {"document": 0.1, "sentence": 0.1, "word": 0.1, "token": 0.1}
DEFAULT_MAX_EXPANDED: dict[str, int | None] = {"document": 3, "sentence": 4, "word": 8, "token": 8}
DEFAULT_MAX_NEW_TOKENS = 20
MAX_NEW_TOKENS = 512
"""Longest greedy answer a request may ask for."""
MAX_SEED = 2**63 - 1
"""Seeds are non-negative and fit the wire's int64."""


def method_names() -> list[str]:
    """Every method a request may name: the estimators of coalition games, then the gradient methods."""
    return [*sorted(ESTIMATORS), *GRADIENT_METHODS]


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
    method: str = DEFAULT_METHOD
    budget: int | None = None
    seed: int = 0
    mode: str = DEFAULT_MODE
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    max_expanded: Mapping[str, int | None] = field(default_factory=lambda: dict(DEFAULT_MAX_EXPANDED))
    value: str = "logprob"
    target_stderr: float | None = None
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    speculative: bool = False
    baseline: str = "zero"
    """Integrated Gradients' baseline embedding: zero | pad."""
    allocation: Allocation | None = None
    """Adaptive allocation (asked for with adaptive=True or a total_budget); None spends every level's budget."""

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
        placeholder: str | None = None,
        target: str | None = None,
        levels: Sequence[str] | str | None = None,
        method: str | None = None,
        budget: int | None = None,
        seed: int = 0,
        mode: str | None = None,
        thresholds: float | Mapping[str, float] | Sequence[float] | None = None,
        max_expanded: int | Mapping[str, int | None] | Sequence[int | None] | None = None,
        value: str | None = None,
        target_stderr: float | None = None,
        max_new_tokens: int | None = None,
        speculative: bool = False,
        baseline: str | None = None,
        adaptive: bool = False,
        total_budget: int | None = None,
        confidence: float | None = None,
    ) -> ExplainRequest:
        """Check every option and fill in defaults; raise RequestError naming the first bad field."""
        classification = text is not None or labels is not None
        if classification and (question is not None or documents is not None):
            raise RequestError("prompt", "give either question and documents (QA) or text and labels (classification), not both")
        if classification:
            prompt: dict[str, Any] = {"text": check_text(text, "text"), "labels": check_labels(labels)}
        else:
            if question is None or documents is None:
                raise RequestError("prompt", "QA needs question and documents (or give text and labels for classification)")
            prompt = {"question": check_text(question, "question"), "documents": _documents(documents)}
        level_names = _levels(levels, CLASSIFICATION_LEVELS if classification else QA_LEVELS)
        chosen_method = _choice(method or DEFAULT_METHOD, method_names(), "method", "method")
        chosen_value = _value(value, classification)
        chosen_baseline = baseline or "zero"
        if chosen_baseline not in BASELINES:
            raise RequestError("baseline", f"must be one of {BASELINES}, got {baseline!r}")
        budget = _positive_int(budget, "budget")
        if classification and instruction:
            fill_template(_optional_string(instruction, "instruction") or "", {"labels": ", ".join(prompt["labels"])}, "instruction")
        if chosen_method in GRADIENT_METHODS:
            check_gradient_options(chosen_method, chosen_value, chosen_baseline, budget)
        try:
            allocation = Allocation(0.95 if confidence is None else confidence, _positive_int(total_budget, "total_budget"))
        except ValueError as error:
            field = "confidence" if str(error).startswith("confidence") else "total_budget"
            raise RequestError(field, str(error).split(": ", 1)[1]) from None
        return cls(
            **prompt,
            instruction=_optional_text(instruction, "instruction"),
            placeholder=_optional_string(placeholder, "placeholder"),
            target=_target(target, prompt.get("labels")),
            levels=level_names,
            method=chosen_method,
            budget=budget,
            seed=_seed(seed),
            mode=_choice(mode or DEFAULT_MODE, MODES, "mode", "mode"),
            thresholds=_per_level(thresholds, DEFAULT_THRESHOLDS, "thresholds", level_names, _non_negative_number),
            max_expanded=_per_level(max_expanded, DEFAULT_MAX_EXPANDED, "max_expanded", level_names, _cap),
            value=chosen_value,
            target_stderr=_target_stderr(target_stderr),
            max_new_tokens=_max_new_tokens(max_new_tokens),
            speculative=_flag(speculative, "speculative"),
            baseline=chosen_baseline,
            allocation=allocation if _flag(adaptive, "adaptive") or total_budget is not None else None,
        )


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


def _per_level(option, defaults: Mapping, name: str, levels: Sequence[str], check) -> dict:
    """A number (every level), a mapping by level name, or a sequence aligned with `levels`."""
    values = dict(defaults)
    if option is None:
        pass
    elif isinstance(option, Mapping):
        for level in option:
            if level not in LEVELS:
                raise RequestError(f"{name}[{level}]", f"unknown level; use {LEVELS}")
        values.update(option)
    elif isinstance(option, (int, float)) and not isinstance(option, bool):
        values.update({level: option for level in LEVELS})
    elif isinstance(option, Sequence) and not isinstance(option, str):
        if len(option) != len(levels):
            raise RequestError(name, f"expected {len(levels)} values (one per level), got {len(option)}")
        values.update(zip(levels, option))
    else:
        raise RequestError(name, f"expected a number, a mapping by level or one value per level, got {option!r}")
    for level, value in values.items():
        check(value, f"{name}[{level}]")
    return values


def _non_negative_number(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise RequestError(name, f"must be a finite number >= 0, got {value!r}")


def _cap(value: object, name: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise RequestError(name, f"must be a non-negative integer or None, got {value!r}")


def _choice(value: object, choices: Sequence[str], name: str, kind: str) -> str:
    if value not in choices:
        raise RequestError(name, f"unknown {kind} {value!r}; choose one of {sorted(choices)}")
    return str(value)


def _positive_int(value: object, name: str) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise RequestError(name, f"must be a positive integer, got {value!r}")
    return value


def _seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise RequestError("seed", f"must be a non-negative integer (0..2^63-1), got {seed!r}")
    return seed


def _value(value: str | None, classification: bool) -> str:
    if classification:
        if value not in (None, "", "label"):
            raise RequestError("value", f"classification uses the 'label' value function, not {value!r}")
        return "label"
    value = value or "logprob"
    if value == "label":
        raise RequestError("value", "'label' is for classification (text and labels)")
    return _choice(value, sorted(VALUE_FUNCTIONS), "value", "value function")


def _target_stderr(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise RequestError("target_stderr", f"must be a positive finite number, got {value!r}")
    return float(value)


def _max_new_tokens(value: object) -> int:
    if value is None:
        return DEFAULT_MAX_NEW_TOKENS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_NEW_TOKENS:
        raise RequestError("max_new_tokens", f"must be an integer in 1..{MAX_NEW_TOKENS}, got {value!r}")
    return value


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise RequestError(name, f"must be true or false, got {value!r}")
    return value
