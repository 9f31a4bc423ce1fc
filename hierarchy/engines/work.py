"""Model calls as values: what a batcher merges and what is shipped to a replica.

Each kind of call is a small picklable class that knows how to run itself on an
engine, how to merge with calls of its kind and what each row weighs when a merged
call's costs are shared out.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from longshap.hierarchy.engines.base import Engine, RunContext
    from longshap.hierarchy.speculative import AnswerTree


@dataclass(frozen=True)
class Work:
    """Rows of one model call."""

    rows: tuple

    def run(self, engine: Engine, context: RunContext) -> list:
        raise NotImplementedError

    def merge_key(self) -> object:
        """Calls with equal keys may share passes; None: never merged."""
        return type(self)

    def row_tokens(self) -> list[int]:
        """Tokens per row: how merged passes' costs are shared out."""
        raise NotImplementedError

    def row_key(self, index: int) -> list[int]:
        """A row's prompt ids: rows are ordered by them so shared prefixes stay together."""
        return list(self.rows[index][0])

    def subset(self, indices: Sequence[int]) -> Work:
        return replace(self, rows=tuple(self.rows[i] for i in indices))

    def merged(self, others: Sequence[Work]) -> Work:
        return replace(self, rows=tuple(row for work in (self, *others) for row in work.rows))


@dataclass(frozen=True)
class ScoreWork(Work):
    """Rows of (prompt ids, continuations): one log-probability per continuation."""

    def run(self, engine: Engine, context: RunContext) -> list:
        return engine.score(self.rows, context)

    def row_tokens(self) -> list[int]:
        return [len(prompt) * max(1, len(continuations)) + sum(map(len, continuations)) for prompt, continuations in self.rows]


@dataclass(frozen=True)
class TokenWork(Work):
    """Rows of (prompt ids, continuation): per-token log-probabilities."""

    def run(self, engine: Engine, context: RunContext) -> list:
        return engine.score_tokens(self.rows, context)

    def row_tokens(self) -> list[int]:
        return [len(prompt) + len(continuation) for prompt, continuation in self.rows]


@dataclass(frozen=True)
class GreedyWork(Work):
    """Rows of prompt ids, decoded greedily."""

    max_new_tokens: int = 20
    tree: AnswerTree | None = None

    def run(self, engine: Engine, context: RunContext) -> list:
        return engine.greedy(self.rows, self.max_new_tokens, context, self.tree)

    def merge_key(self) -> object:
        # An answer tree belongs to one request's value function.
        return None if self.tree is not None else (GreedyWork, self.max_new_tokens)

    def row_tokens(self) -> list[int]:
        return [len(row) for row in self.rows]

    def row_key(self, index: int) -> list[int]:
        return list(self.rows[index])
