"""One request's view of an engine: text in, values out, every call charged to the request's run context.

Value functions and the explainer speak in prompt texts; engines speak in token ids.
A view turns one into the other and counts the evaluations (one per prompt), so a
request's statistics are its own whichever engine, batcher or replica runs its rows.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from longshap.hierarchy.engines.base import Engine, EngineStats, RunContext

if TYPE_CHECKING:
    from longshap.hierarchy.speculative import AnswerTree


class ModelView:
    """An engine bound to one request's run context."""

    def __init__(self, engine: Engine, context: RunContext | None = None) -> None:
        self.engine = engine
        self.context = context if context is not None else RunContext()

    @property
    def stats(self) -> EngineStats:
        return self.context.stats

    # ---- text <-> tokens ----------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        return self.engine.encode(prompt)

    def continuation_ids(self, prompt: str, continuation: str) -> list[int]:
        """Tokens of `continuation` as the model sees them after `prompt` (joint tokenisation when it splits cleanly)."""
        head = self.engine.encode(prompt)
        joint = self.engine.encode(prompt + continuation)
        if joint[: len(head)] == head and len(joint) > len(head):
            return joint[len(head) :]
        return self.engine.encode_offsets(continuation)[0]

    def token_offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of a text's tokens (no special tokens): what the token level segments by."""
        return self.engine.encode_offsets(text)[1]

    def decode(self, tokens: Sequence[int]) -> str:
        return self.engine.decode(tokens)

    def token_texts(self, tokens: Sequence[int]) -> list[str]:
        return self.engine.token_texts(tokens)

    # ---- model calls --------------------------------------------------------------------
    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[int]]) -> np.ndarray:
        """Log-probability of each continuation (token ids) after each prompt: shape (m, c)."""
        self.context.check()
        rows = [(self.engine.encode(p), [list(c) for c in continuations]) for p in prompts]
        scores = self.engine.score(rows, self.context)
        self.context.stats.evaluations += len(prompts)
        return np.array(scores).reshape(len(prompts), len(continuations))

    def continuation_token_logprobs(self, prompts: Sequence[str], continuation: Sequence[int]) -> np.ndarray:
        """log p(token t | prompt, earlier tokens) of one continuation after each prompt: shape (m, len(continuation))."""
        self.context.check()
        rows = [(self.engine.encode(p), list(continuation)) for p in prompts]
        scores = self.engine.score_tokens(rows, self.context)
        self.context.stats.evaluations += len(prompts)
        return np.vstack(scores)

    def greedy(self, prompts: Sequence[str], max_new_tokens: int = 20, tree: AnswerTree | None = None) -> list[list[int]]:
        """Greedy answers (token ids, stop token excluded) for each prompt; answers in `tree` are verified in one pass."""
        self.context.check()
        answers = self.engine.greedy([self.engine.encode(p) for p in prompts], max_new_tokens, self.context, tree)
        self.context.stats.evaluations += len(prompts)
        return answers
