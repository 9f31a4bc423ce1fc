"""What an explanation explains: the request's prompt, and the answer or label its value function scores.

A QA request explains its given target or the model's greedy answer to the full
prompt; a classification explains its given label or the predicted one.
"""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.engines.view import ModelView
from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.prompt import ClassificationPrompt, QAPrompt
from longshap.hierarchy.request import ExplainRequest
from longshap.hierarchy.results import AnswerEvent
from longshap.hierarchy.segmentation import FeatureTree
from longshap.hierarchy.values import Target
from longshap.hierarchy.values.label import label_token_ids, normalised_label_logprobs


def explained_target(view: ModelView, prompt, request: ExplainRequest, tree: FeatureTree) -> tuple[Target, AnswerEvent]:
    """What the value function explains, and the event announcing it."""
    full_prompt = prompt.render(tree)
    if request.classification:
        return _classification_target(view, prompt, full_prompt, request.target, request.max_new_tokens)
    return _qa_target(view, full_prompt, request.target, request.max_new_tokens)


def _qa_target(view: ModelView, full_prompt: str, target: str | None, max_new_tokens: int) -> tuple[Target, AnswerEvent]:
    if target is not None:
        return Target(full_prompt, answer=target, max_new_tokens=max_new_tokens), AnswerEvent(target, "given")
    answer = view.decode(view.greedy([full_prompt], max_new_tokens)[0])
    if not answer:
        raise RequestError("target", "the model's greedy answer to the full prompt is empty; give a target to explain a given answer")
    return Target(full_prompt, answer=answer, max_new_tokens=max_new_tokens), AnswerEvent(answer, "generated")


def _classification_target(
    view: ModelView, prompt: ClassificationPrompt, full_prompt: str, target: str | None, max_new_tokens: int
) -> tuple[Target, AnswerEvent]:
    ids = label_token_ids(view, full_prompt, prompt.labels)
    probabilities = np.exp(normalised_label_logprobs(view, [full_prompt], ids)[0])
    by_label = {label: float(p) for label, p in zip(prompt.labels, probabilities)}
    if target is None:
        index, source = int(np.argmax(probabilities)), "predicted"
    else:
        index, source = prompt.labels.index(target), "given"
    label = prompt.labels[index]
    return (
        Target(full_prompt, labels=prompt.labels, label_index=index, max_new_tokens=max_new_tokens),
        AnswerEvent(label, source, by_label),
    )


def request_prompt(request: ExplainRequest) -> QAPrompt | ClassificationPrompt:
    """The prompt a request describes: its template, texts and placeholder."""
    extra = {"instruction": request.instruction} if request.instruction else {}
    if request.classification:
        return ClassificationPrompt(request.text or "", list(request.labels), placeholder=request.placeholder, **extra)
    return QAPrompt(request.question or "", list(request.documents), placeholder=request.placeholder, **extra)
