"""Log-probability of the target answer under teacher forcing: no decoding, one pass per coalition.

Besides the answer's value (column 0) it returns one column per answer token, read
from the same forward pass: log p(token t | prompt, earlier answer tokens). They add
up to column 0, so every unit's per-token attributions add up to its attribution.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from longshap.hierarchy.values.base import FixedColumns, Target, register

if TYPE_CHECKING:  # the engines import torch only once a model is loaded
    from longshap.hierarchy.engines.view import ModelView


@register("logprob")
class TargetLogProb(FixedColumns):
    """Sum of the answer tokens' log-probabilities: additive across tokens, unbounded below."""

    def __init__(self, model: ModelView, target: Target) -> None:
        if not target.answer or not target.answer.strip():
            raise ValueError("target: the answer to explain is empty")
        self.model = model
        self.answer = target.answer.strip()
        self.tokens = model.continuation_ids(target.full_prompt, " " + self.answer)
        self.columns = [self.answer]
        self.token_columns = model.token_texts(self.tokens)
        """The answer's tokens as text: columns 1.. of every output row, after the answer's own value."""

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        per_token = self.model.continuation_token_logprobs(prompts, self.tokens)
        return self.combine(per_token)

    @staticmethod
    def combine(per_token: np.ndarray) -> np.ndarray:
        """(m, T) token log-probabilities -> (m, 1 + T): the answer's value, then each token's share of it."""
        return np.hstack([per_token.sum(axis=1, keepdims=True), per_token])
