"""Answer distribution (TextGenSHAP): the greedy answer under each coalition, one indicator per distinct answer.

No candidate list is needed in advance: every distinct answer decoded while sampling
gets its own column, so each answer the context could produce gets its own
attribution. Column 0 is the answer to the full prompt. Answers already decoded are
kept in a prefix tree and verified in one forward pass (hierarchy.speculative).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from longshap.hierarchy.values.base import Target, register

if TYPE_CHECKING:  # the engines import torch only once a model is loaded
    from longshap.hierarchy.engines.view import ModelView


VISIBLE_ANSWER_SHARE = 0.01
"""Answers decoded in under 1% of coalitions are hidden, as in TextGenSHAP."""


def normalise_answer(text: str) -> str:
    """Answers that differ only in case, spacing or trailing punctuation are the same answer."""
    return " ".join(text.strip().strip(".,;:!?\"'").split()).lower()


@register("answers")
class AnswerDistribution:
    def __init__(self, model: ModelView, target: Target) -> None:
        self.model = model
        self.max_new_tokens = target.max_new_tokens
        from longshap.hierarchy.speculative import AnswerTree

        self.tree = AnswerTree() if target.speculative else None
        self.columns: list[str] = []
        self._index: dict[str, int] = {}
        self.counts: list[int] = []
        if target.answer is not None:
            self._column(target.answer)

    def _column(self, answer: str) -> int:
        key = normalise_answer(answer)
        if key not in self._index:
            self._index[key] = len(self.columns)
            self.columns.append(answer.strip())
            self.counts.append(0)
        return self._index[key]

    def shares(self) -> list[float]:
        total = max(sum(self.counts), 1)
        return [count / total for count in self.counts]

    def visible_columns(self) -> list[int]:
        """The explained answer, and every answer seen in at least VISIBLE_ANSWER_SHARE of coalitions."""
        return [c for c, share in enumerate(self.shares()) if c == 0 or share >= VISIBLE_ANSWER_SHARE]

    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        answers = self.model.greedy(prompts, self.max_new_tokens, tree=self.tree)
        if self.tree is not None:
            for tokens in answers:
                self.tree.add(tokens)
        decoded = [self.model.decode(tokens) for tokens in answers]
        indices = [self._column(answer) for answer in decoded]
        out = np.zeros((len(prompts), len(self.columns)))
        for row, column in enumerate(indices):
            out[row, column] = 1.0
            self.counts[column] += 1
        return out
