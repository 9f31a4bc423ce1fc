"""Faithfulness metrics for attributions (DeYoung et al. 2020, as used by the seed paper).

All take `probability(keep)`: the model's probability of the explained output ŷ when
only the features marked True in each row of `keep` (shape (m, n)) are present.
- sufficiency  = 1 − max(0, p(ŷ|X) − p(ŷ|R)): keeping only the top features R suffices;
- comprehensiveness = max(0, p(ŷ|X) − p(ŷ|X∖R)): removing them takes the prediction away;
- AOPC: each averaged over top-k% rationales, k in (1, 5, 10, 20, 50) by default;
- deletion curve: p(ŷ) as the top features are removed one at a time.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

ProbabilityFn = Callable[[np.ndarray], np.ndarray]
AOPC_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)


def top_k_mask(values: Sequence[float], fraction: float) -> np.ndarray:
    """The ceil(fraction·n) highest-valued features (at least one); ties broken by position."""
    scores = np.asarray(values, dtype=float)
    if scores.ndim != 1 or scores.size == 0:
        raise ValueError("values: expected a non-empty 1-D array of attributions")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction: must be in (0, 1], got {fraction}")
    k = max(1, math.ceil(fraction * scores.size))
    mask = np.zeros(scores.size, dtype=np.bool_)
    mask[np.argsort(-scores, kind="stable")[:k]] = True
    return mask


def _probabilities(probability: ProbabilityFn, keep: np.ndarray) -> np.ndarray:
    p = np.asarray(probability(keep), dtype=float).reshape(-1)
    if p.shape[0] != keep.shape[0] or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("probability function must return one probability in [0, 1] per row")
    return p


def sufficiency(probability: ProbabilityFn, values: Sequence[float], fraction: float) -> float:
    rationale = top_k_mask(values, fraction)
    full, kept = _probabilities(probability, np.vstack([np.ones_like(rationale), rationale]))
    return float(1 - max(0.0, full - kept))


def comprehensiveness(probability: ProbabilityFn, values: Sequence[float], fraction: float) -> float:
    rationale = top_k_mask(values, fraction)
    full, removed = _probabilities(probability, np.vstack([np.ones_like(rationale), ~rationale]))
    return float(max(0.0, full - removed))


def aopc(probability: ProbabilityFn, values: Sequence[float], fractions: Sequence[float] = AOPC_FRACTIONS) -> dict:
    """Sufficiency and comprehensiveness at each top-k% and their averages, in one batched call."""
    masks = [top_k_mask(values, f) for f in fractions]
    keep = np.vstack([np.ones_like(masks[0])] + masks + [~m for m in masks])
    p = _probabilities(probability, keep)
    full, kept, removed = p[0], p[1 : 1 + len(masks)], p[1 + len(masks) :]
    suff = 1 - np.maximum(0.0, full - kept)
    comp = np.maximum(0.0, full - removed)
    return {
        "fractions": list(fractions),
        "sufficiency": suff.tolist(),
        "comprehensiveness": comp.tolist(),
        "aopc_sufficiency": float(suff.mean()),
        "aopc_comprehensiveness": float(comp.mean()),
    }


def deletion_curve(probability: ProbabilityFn, values: Sequence[float]) -> np.ndarray:
    """p(ŷ) after removing the 0, 1, ..., n highest-valued features; a faithful ranking falls fast."""
    order = np.argsort(-np.asarray(values, dtype=float), kind="stable")
    keep = np.ones((len(order) + 1, len(order)), dtype=bool)
    for step, feature in enumerate(order, start=1):
        keep[step:, feature] = False
    return _probabilities(probability, keep)
