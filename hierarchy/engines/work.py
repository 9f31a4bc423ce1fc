"""Model calls as values: what a batcher merges and what is shipped to a replica.

Each kind of call is a small picklable class that knows how to run itself on an
engine, how to merge with calls of its kind and what each row weighs when a merged
call's costs are shared out.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Sequence

from longshap.hierarchy.engines.base import check_continuations

if TYPE_CHECKING:
    import numpy as np

    from longshap.hierarchy.engines.base import Engine, RunContext, ScoreRow, TokenRow
    from longshap.hierarchy.engines.blend_plan import BlendPlan
    from longshap.hierarchy.speculative import AnswerTree


@dataclass(frozen=True)
class Work:
    """Rows of one model call, with the blend plan of the request they belong to (kv_mode blend)."""

    rows: tuple
    blend: BlendPlan | None = None

    def run(self, engine: Engine, context: RunContext) -> list:
        raise NotImplementedError

    def merge_key(self) -> object:
        """Calls with equal keys may share passes; None: never merged. Blended rows merge only with their own plan's."""
        return (type(self), self.blend.key if self.blend is not None else None)

    def context_for(self, context: RunContext) -> RunContext:
        """The context that runs this call: the caller's (stop flag, stats, cache scope) with this call's blend plan."""
        return replace(context, blend=self.blend)

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
        return engine.score(self.rows, self.context_for(context))

    def row_tokens(self) -> list[int]:
        return [len(prompt) * max(1, len(continuations)) + sum(map(len, continuations)) for prompt, continuations in self.rows]


@dataclass(frozen=True)
class TokenWork(Work):
    """Rows of (prompt ids, continuation): per-token log-probabilities."""

    def run(self, engine: Engine, context: RunContext) -> list:
        return engine.score_tokens(self.rows, self.context_for(context))

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


class WorkEngine:
    """Base of the engines that run model calls elsewhere (merged with others', on replicas).

    Text goes through `front`, an engine of the same model; every model call becomes a
    `Work` value for `run_work`, which subclasses implement.
    """

    def __init__(self, front: Engine) -> None:
        self.front = front
        self.capabilities = front.capabilities
        self.architecture = front.architecture
        self.max_batch_tokens = front.max_batch_tokens

    def encode(self, text: str) -> list[int]:
        return self.front.encode(text)

    def encode_offsets(self, text: str, special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        return self.front.encode_offsets(text, special_tokens)

    def decode(self, ids: Sequence[int]) -> str:
        return self.front.decode(ids)

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return self.front.token_texts(ids)

    def score(self, rows: Sequence[ScoreRow], context: RunContext) -> list[np.ndarray]:
        for _, continuations in rows:  # here, not where merged: one request's bad rows must not fail the others'
            check_continuations(continuations)
        return self.run_work(ScoreWork(tuple(rows), context.blend), context)

    def score_tokens(self, rows: Sequence[TokenRow], context: RunContext) -> list[np.ndarray]:
        check_continuations([continuation for _, continuation in rows])
        return self.run_work(TokenWork(tuple(rows), context.blend), context)

    def greedy(self, rows: Sequence[Sequence[int]], max_new_tokens: int, context: RunContext, tree: AnswerTree | None = None) -> list[list[int]]:
        return self.run_work(GreedyWork(tuple(rows), max_new_tokens=max_new_tokens, tree=tree), context)

    def run_work(self, work: Work, context: RunContext) -> list:
        raise NotImplementedError
