"""Probability of the target answer: bounded in [0, 1], so values read as shares of a chance."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from longshap.hierarchy.values.base import register
from longshap.hierarchy.values.logprob import TargetLogProb


@register("probability")
class TargetProbability(TargetLogProb):
    def __call__(self, prompts: Sequence[str]) -> np.ndarray:
        return np.exp(super().__call__(prompts))
