"""Probability of the target answer: bounded in [0, 1], so values read as shares of a chance.

Its per-token columns are the steps of the answer's prefix probability,
P(tokens 1..t) - P(tokens 1..t-1) with P(no tokens) = 1: they add up to P(answer) - 1,
and a constant changes no attribution, so per-token attributions add up to the
answer's. Column t shows how a unit moves the answer's probability at its t-th token.
"""
from __future__ import annotations

import numpy as np

from longshap.hierarchy.values.base import register
from longshap.hierarchy.values.logprob import TargetLogProb


@register("probability")
class TargetProbability(TargetLogProb):
    @staticmethod
    def combine(per_token: np.ndarray) -> np.ndarray:
        prefix = np.exp(np.cumsum(per_token, axis=1))
        steps = np.diff(np.hstack([np.ones((len(prefix), 1)), prefix]), axis=1)
        return np.hstack([prefix[:, -1:], steps])
