"""The value-function contract: a batch of rendered prompts in, one row of values per prompt out.

A value function is built for one request (it knows the target) and is called with
every coalition's prompt text; it returns (m,) or (m, k) values. The registry lets
the API name value functions ("logprob", "probability", "label", "answers").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from longshap.hierarchy.registry import Registry

if TYPE_CHECKING:  # the engines import torch only once a model is loaded
    from longshap.hierarchy.engines.view import ModelView


class ValueFunction(Protocol):
    name: str
    columns: list[str]
    """One name per output column (the explained target first)."""

    def __call__(self, prompts: Sequence[str]) -> np.ndarray: ...

    def visible_columns(self) -> list[int]:
        """The columns worth reporting and expanding on (all of them unless outputs are sampled)."""
        ...

    def shares(self) -> list[float] | None:
        """For sampled outputs, how often each column's output was seen so far; None otherwise."""
        ...


class FixedColumns:
    """Value functions whose outputs are known before sampling: every column counts, nothing is a share."""

    columns: list[str]

    def visible_columns(self) -> list[int]:
        return list(range(len(self.columns)))

    def shares(self) -> list[float] | None:
        return None


@dataclass
class Target:
    """What is being explained: an answer text after the full prompt, or a label among labels."""

    full_prompt: str
    answer: str | None = None
    labels: list[str] | None = None
    label_index: int | None = None
    max_new_tokens: int = 20
    speculative: bool = False
    """Verify already-seen answers in one pass instead of decoding them again."""


ValueFactory = Callable[["ModelView", Target], ValueFunction]
VALUE_FUNCTIONS: Registry[ValueFactory] = Registry("value function")
register = VALUE_FUNCTIONS.register


def build_value_function(name: str, model: ModelView, target: Target) -> ValueFunction:
    return VALUE_FUNCTIONS.lookup(name)(model, target)
