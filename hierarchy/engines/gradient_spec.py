"""What a gradient attribution asks of an engine, and what it gets back: plain data, so a replica can run it.

The engine differentiates the explained value with respect to the input embeddings
of the full prompt (see `hierarchy.gradients` for the methods and how token
attributions become unit attributions).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VALUES = ("logprob", "probability", "label")
"""The value functions gradients can explain (they are differentiable)."""
DEFAULT_STEPS = 50
"""Integrated Gradients' interpolation points (Captum's default, Gauss-Legendre)."""


@dataclass(frozen=True)
class GradientSpec:
    ids: tuple[int, ...]
    """The full prompt's ids, special tokens included."""
    movable: tuple[bool, ...]
    """Per token: is it document text (moved to the baseline by Integrated Gradients)?"""
    continuations: tuple[tuple[int, ...], ...]
    """The answer's ids (logprob, probability) or each label's (label)."""
    value: str
    label_index: int | None
    method: str
    baseline: str
    steps: int | None

    def __post_init__(self) -> None:
        if self.value not in VALUES:
            raise ValueError(f"value: gradient methods explain {' or '.join(VALUES)} values, not {self.value!r}")
        if len(self.ids) != len(self.movable):
            raise ValueError("movable: one flag per prompt token")


@dataclass(frozen=True)
class GradientResult:
    values: np.ndarray
    """(prompt tokens, columns): one column per value column (per answer token for logprob and probability)."""
    rows: int
    """Sequences pushed through the model (forward and backward), interpolation points included."""
    completeness: dict | None = None
    """Integrated Gradients: per column, sum of attributions against f(input) - f(baseline), and Captum's delta."""
