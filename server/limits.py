"""Operator limits on a request's size, whole text and what one evaluation costs: declared, made flags and checked here.

`Limits` declares each limit with its `longshap serve` flag (`add_limit_options`); the
checks run before a request is queued: documents, budget and candidates (on the engine's
request), every text field and the cost of one evaluation (on the wire message).

Every text field counts. The model reads the rendered prompt plus the scored
continuation on every evaluation, so the bound is on that worst case: the prompt's
text (the classification instruction with `{labels}` filled in), the longest
continuation (target, label or candidate), and the placeholder once per removable
unit (a word at the finest level, or a whole document). Continuations are scored one
row each, so the labels' count is capped too. With these bounds the work of one
request is at most (max_characters) x (evaluations) x (labels or candidates).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable, Iterable

from longshap.hierarchy.options import INT32_MAX
from longshap.hierarchy.prompt import DEFAULT_CLASSIFICATION_INSTRUCTION, DEFAULT_QA_INSTRUCTION, fill_template
from longshap.proto.wire import pb
from longshap.server.errors import invalid

if TYPE_CHECKING:
    from longshap.hierarchy.request import ExplainRequest


def _limit(default: int, help: str, low: int = 1) -> Any:
    """A limit's default, and its flag's help and lowest value (the highest is what the wire's int32 carries)."""
    return dataclasses.field(default=default, metadata={"help": help, "low": low})


@dataclasses.dataclass(frozen=True)
class Limits:
    """Operator limits on one request, reported by ListModels; each is a `longshap serve` flag of the same name."""

    max_documents: int = _limit(64, "documents of one request")
    max_characters: int = _limit(200_000, "characters one evaluation may read: all prompt text, the placeholder once per unit, the target")
    max_budget: int = _limit(10_000, "model evaluations per level")
    max_candidates: int = _limit(16, "candidate answers of one rerank")
    queue_size: int = _limit(4, "requests that may wait for the busy worker", low=0)
    max_labels: int = _limit(16, "labels of one classification", low=2)
    max_field_characters: int = _limit(2_000, "each question, title, instruction, target, placeholder, label or candidate")
    max_players: int = _limit(2_048, "units of one game (the children of one expanded unit, or every unit of the first level): "
                                     "a game's memory grows with its players times its budget", low=2)

    def to_proto(self) -> pb.Limits:
        return pb.Limits(**self.__dict__)


def bounded(kind: type, low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a finite `kind` in low..high, else a one-line usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"must be in {low}..{high}, got {text}")
        return value

    return parse


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """One flag per limit (--max-documents, ..., --queue-size), defaulting to `Limits()`."""
    group = parser.add_argument_group("limits on one request")
    for limit in dataclasses.fields(Limits):
        low = limit.metadata["low"]
        group.add_argument(
            f"--{limit.name.replace('_', '-')}", type=bounded(int, low, INT32_MAX), default=limit.default,
            help=f"{limit.metadata['help']} ({low}..{INT32_MAX}; default {limit.default})",
        )


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(**{limit.name: getattr(args, limit.name) for limit in dataclasses.fields(Limits)})


def check_engine_limits(request: ExplainRequest, limits: Limits, prompt_field: str, candidates: list[str] | None = None) -> None:
    """Documents, budget and (for a rerank) candidates within the operator's limits."""
    if len(request.documents) > limits.max_documents:
        raise invalid(f"{prompt_field}.documents: {len(request.documents)} documents, the limit is {limits.max_documents}")
    if request.budget is not None and request.budget > limits.max_budget:
        raise invalid(f"budget: must be an integer in 1..{limits.max_budget}, got {request.budget}")
    total = request.allocation.total_budget if request.allocation is not None else None
    most = limits.max_budget * len(request.levels)
    if total is not None and total > most:
        raise invalid(f"total_budget: must be an integer in 1..{most} (max_budget {limits.max_budget} x {len(request.levels)} levels), got {total}")
    if candidates is not None and len(candidates) > limits.max_candidates:
        raise invalid(f"candidates: {len(candidates)} candidates, the limit is {limits.max_candidates}")


def check_field_lengths(fields: Iterable[tuple[str, str]], limits: Limits) -> None:
    """Each short field (question, title, instruction, target, placeholder, label, candidate) within its own limit."""
    for name, text in fields:
        if len(text) > limits.max_field_characters:
            raise invalid(f"{name}: {len(text)} characters, the limit is {limits.max_field_characters}")


def check_cost(
    prompt_name: str, prompt_characters: int, texts: Iterable[str], placeholder: str, continuations: Iterable[str], limits: Limits,
    tokens: bool = False,
) -> None:
    """The characters one evaluation can read, worst case, within max_characters.

    A placeholder replaces every removed unit: a word, or at the `tokens` level each
    model token, of which a text has at most one per non-space character.
    """
    texts = list(texts)
    if tokens:
        removable_units = sum(sum(not c.isspace() for c in text) + 1 for text in texts)
    else:
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
        check_cost("qa", _qa_characters(prompt), [d.text for d in prompt.documents], placeholder, target, limits, "token" in request.levels)
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
    check_cost("classification", len(prompt.text) + len(instruction), [prompt.text], placeholder, labels, limits, "token" in request.levels)


def check_rerank_limits(request: pb.RerankRequest, limits: Limits) -> None:
    """Every text field of a RerankRequest and the worst-case cost of one candidate's evaluation."""
    candidates = list(request.candidates)
    named = [(f"candidates[{i}]", c) for i, c in enumerate(candidates)]
    check_field_lengths(_qa_fields(request.prompt, "prompt") + named, limits)
    check_cost("prompt", _qa_characters(request.prompt), [d.text for d in request.prompt.documents], "", candidates, limits)
