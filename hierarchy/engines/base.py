"""The model boundary: what the explainer asks of whatever runs the model, and the per-request run context.

An engine works on token ids. It tokenises and detokenises, scores rows (prompt ids
plus continuations, whole or per token) and decodes greedy answers; optional
capabilities (gradients, prefix reuse, answer-tree verification, draft decoding) are
declared in `capabilities`, so callers ask instead of guessing from the type.

Every model call carries a `RunContext`: the request's cancellation and deadline,
the statistics it is charged and the scope of its prefix KV states. Engines keep
none of these on themselves, so one engine serves concurrent requests, each with its
own stop flag and its own exact costs.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Callable, Protocol, Sequence, TypeVar, runtime_checkable

import numpy as np

from longshap.hierarchy.errors import Cancelled

if TYPE_CHECKING:
    from longshap.hierarchy.engines.blend_plan import BlendPlan
    from longshap.hierarchy.engines.gradient_spec import GradientResult, GradientSpec
    from longshap.hierarchy.speculative import AnswerTree

GRADIENTS = "gradients"
"""`attribute_tokens`: Captum's gradient methods run where the weights are."""
PREFIX_REUSE = "prefix_reuse"
"""Rows sharing a prefix forward it once; states are kept in the run's cache scope."""
ANSWER_TREE = "answer_tree"
"""`greedy(..., tree=...)` verifies already-seen answers in one pass instead of decoding them."""
DRAFT = "draft"
"""A draft model proposes tokens whenever an answer must be decoded."""
BLEND = "blend"
"""Scores rows of a run with a `BlendPlan` from per-document KV states, re-encoded for each row's layout."""

ScoreRow = tuple[Sequence[int], Sequence[Sequence[int]]]
"""(prompt ids, continuations): scored as one log-probability per continuation."""
TokenRow = tuple[Sequence[int], Sequence[int]]
"""(prompt ids, one continuation): scored per continuation token."""

_T = TypeVar("_T")
POLL_S = 0.05
"""How often a caller waiting for the model (a lock, a merged call, replicas) checks its run context."""


@dataclass
class EngineStats:
    """What the model did for one run: coalitions evaluated and tokens pushed through it."""

    evaluations: int = 0
    forward_tokens: int = 0
    reused_tokens: int = 0
    """Prompt tokens not recomputed because their KV states were shared with other rows."""
    cached_tokens: int = 0
    """... of which read from the prefix states kept across batches (a subset of reused_tokens)."""
    forward_passes: int = 0
    decode_steps: int = 0
    tree_checks: int = 0
    """Coalitions whose greedy answer was looked up in the answer tree."""
    tree_accepted: int = 0
    """... of which the answer was found in the tree, with no decoding."""
    blended_rows: int = 0
    """Rows scored from per-document states blended for their coalition (kv_mode blend)."""
    draft_target_passes: int = 0
    draft_tokens: int = 0
    """Target-model passes and tokens produced while decoding with a draft model."""

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)

    def add(self, counts: dict[str, int]) -> None:
        """Add another run's counts (a merged call's share, a replica's chunk)."""
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + int(value))

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


class CacheScope:
    """Where engines keep prefix KV states for the runs that hold this scope.

    A run context gets a scope of its own by default, so a request's values and token
    counts never depend on other requests, and its states are freed with it. Passing
    one scope to several contexts shares the states between them (a batcher's merged
    calls, a replica's calls); `enabled=False` keeps nothing between batches.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._stores: dict[int, tuple[object, object]] = {}
        self._lock = threading.Lock()

    def store(self, owner: object, make: Callable[[], _T]) -> _T:
        """The store `owner` (an engine) keeps in this scope, made on first use."""
        with self._lock:
            entry = self._stores.get(id(owner))
            if entry is None or entry[0] is not owner:
                entry = (owner, make())
                self._stores[id(owner)] = entry
            return entry[1]  # type: ignore[return-value]  # made by `make` for this owner

    def clear(self) -> None:
        with self._lock:
            self._stores.clear()


@dataclass
class RunContext:
    """Everything about one request that a model call needs; engines store none of it."""

    should_stop: Callable[[], bool] | None = None
    """Polled between batches and before every decoder layer: a cancelled request stops mid-batch."""
    deadline: float | None = None
    """time.monotonic() after which the run stops as if cancelled."""
    stats: EngineStats = field(default_factory=EngineStats)
    cache: CacheScope = field(default_factory=CacheScope)
    blend: BlendPlan | None = None
    """Set while a request scores in kv_mode blend: engines with BLEND read documents' states through it."""

    def stopped(self) -> bool:
        if self.deadline is not None and time.monotonic() > self.deadline:
            return True
        return self.should_stop is not None and self.should_stop()

    def check(self) -> None:
        """Raise Cancelled once the run should stop."""
        if self.stopped():
            raise Cancelled("explanation cancelled")


@runtime_checkable
class Engine(Protocol):
    """Runs the model at token level; every call is charged to and stopped by its run context."""

    capabilities: frozenset[str]
    architecture: str
    """The model's family, as its config names it (llama, gemma3_text, ...)."""
    max_batch_tokens: int
    """Tokens one batch may forward; gradient methods size their batches by it too."""

    def encode(self, text: str) -> list[int]:
        """A prompt's ids, with the model's special tokens."""
        ...

    def encode_offsets(self, text: str, special_tokens: bool = False) -> tuple[list[int], list[tuple[int, int]]]:
        """A text's ids (with the model's special tokens if asked), and each token's character span ((0, 0) for special ones)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """An answer's text, special tokens dropped, stripped."""
        ...

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        """Each token alone as text (for per-token columns)."""
        ...

    def score(self, rows: Sequence[ScoreRow], context: RunContext) -> list[np.ndarray]:
        """Per row, the log-probability of each of its continuations after its prompt."""
        ...

    def score_tokens(self, rows: Sequence[TokenRow], context: RunContext) -> list[np.ndarray]:
        """Per row, log p(token t | prompt, earlier tokens) for each continuation token."""
        ...

    def greedy(self, rows: Sequence[Sequence[int]], max_new_tokens: int, context: RunContext, tree: AnswerTree | None = None) -> list[list[int]]:
        """Greedy answers (ids, stop token excluded); with ANSWER_TREE, answers in `tree` are verified in one pass."""
        ...

    def attribute_tokens(self, spec: GradientSpec, context: RunContext) -> GradientResult:
        """Gradient attributions per prompt token (GRADIENTS capability only)."""
        ...

    def close(self) -> None:
        """Release what the engine started (threads, replicas); not what it was given."""
        ...


def check_continuations(continuations: Sequence[Sequence[int]]) -> None:
    if not continuations or any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")


def score_by_tokens(
    rows: Sequence[ScoreRow], score_tokens: Callable[[Sequence[TokenRow], RunContext], list[np.ndarray]], context: RunContext,
) -> list[np.ndarray]:
    """`Engine.score` for engines that score (prompt, continuation) pairs per token: each continuation's sum, row by row."""
    for _, continuations in rows:
        check_continuations(continuations)
    per_token = score_tokens([(prompt, continuation) for prompt, continuations in rows for continuation in continuations], context)
    sums = iter([float(np.sum(scores)) for scores in per_token])
    return [np.array([next(sums) for _ in continuations]) for _, continuations in rows]


def wait_for(lock: threading.Lock, context: RunContext) -> None:
    """Take `lock`, giving up with Cancelled as soon as the run should stop."""
    while not lock.acquire(timeout=POLL_S):
        if context.stopped():
            raise Cancelled("cancelled while waiting for the model")
