"""Classification: log-probability of one label, normalised over the given label set.

Labels are scored as continuations (never parsed from free text), so the model's
preference among exactly these labels is measured even when it would have
generated something else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from longshap.hierarchy.values.base import FixedColumns, Target, register

if TYPE_CHECKING:  # the engines import torch only once a model is loaded
    from longshap.hierarchy.engines.view import ModelView


def label_token_ids(model: ModelView, full_prompt: str, labels: Sequence[str]) -> list[list[int]]:
    return [model.continuation_ids(full_prompt, " " + label.strip()) for label in labels]


def normalised_label_logprobs(model: ModelView, prompts: Sequence[str], label_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """log p(label | prompt, one of the labels): shape (m, number of labels)."""
    scores = model.continuation_logprobs(prompts, label_ids)
    return scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)


@register("label")
class LabelLogProb(FixedColumns):
    def __init__(self, model: ModelView, target: Target) -> None:
        if not target.labels or target.label_index is None:
            raise ValueError("the label value function needs labels and the label to explain")
        self.model = model
        self.label_index = target.label_index
        self.label_ids = label_token_ids(model, target.full_prompt, target.labels)
        self.columns = [target.labels[target.label_index]]

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        return normalised_label_logprobs(self.model, prompts, self.label_ids)[:, self.label_index]
