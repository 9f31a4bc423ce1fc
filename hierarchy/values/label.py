"""Classification: log-probability of one label, normalised over the given label set.

Labels are scored as continuations (never parsed from free text), so the model's
preference among exactly these labels is measured even when it would have
generated something else.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from longshap.hierarchy.values.base import FixedColumns, Target, register

if TYPE_CHECKING:  # the scorer imports torch; values are light until a model is loaded
    from longshap.hierarchy.scorer import ModelScorer


def label_token_ids(scorer: ModelScorer, full_prompt: str, labels: Sequence[str]) -> list[list[int]]:
    return [scorer.continuation_ids(full_prompt, " " + label.strip()) for label in labels]


def normalised_label_logprobs(scorer: ModelScorer, prompts: Sequence[str], label_ids: Sequence[Sequence[int]]) -> np.ndarray:
    """log p(label | prompt, one of the labels): shape (m, number of labels)."""
    scores = scorer.continuation_logprobs(prompts, label_ids)
    return scores - np.logaddexp.reduce(scores, axis=1, keepdims=True)


@register("label")
class LabelLogProb(FixedColumns):
    def __init__(self, scorer: ModelScorer, target: Target) -> None:
        if not target.labels or target.label_index is None:
            raise ValueError("the label value function needs labels and the label to explain")
        self.scorer = scorer
        self.label_index = target.label_index
        self.label_ids = label_token_ids(scorer, target.full_prompt, target.labels)
        self.columns = [target.labels[target.label_index]]

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        return normalised_label_logprobs(self.scorer, prompts, self.label_ids)[:, self.label_index]
