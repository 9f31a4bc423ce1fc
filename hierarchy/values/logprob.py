"""Log-probability of the target answer under teacher forcing: no decoding, one pass per coalition."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from longshap.hierarchy.values.base import FixedColumns, Target, register

if TYPE_CHECKING:  # the scorer imports torch; values are light until a model is loaded
    from longshap.hierarchy.scorer import ModelScorer


@register("logprob")
class TargetLogProb(FixedColumns):
    """Sum of the answer tokens' log-probabilities: additive across tokens, unbounded below."""

    def __init__(self, scorer: ModelScorer, target: Target) -> None:
        if not target.answer or not target.answer.strip():
            raise ValueError("target: the answer to explain is empty")
        self.scorer = scorer
        self.answer = target.answer.strip()
        self.tokens = scorer.continuation_ids(target.full_prompt, " " + self.answer)
        self.columns = [self.answer]

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        return self.scorer.continuation_logprobs(prompts, [self.tokens])[:, 0]
