"""Faithfulness metrics for attributions (DeYoung et al. 2020, as used by the seed paper).

All take `probability(keep)`: the model's probability of the explained output ŷ when
only the features marked True in each row of `keep` (shape (m, n)) are present.
- sufficiency  = 1 − max(0, p(ŷ|X) − p(ŷ|R)): keeping only the top features R suffices;
- comprehensiveness = max(0, p(ŷ|X) − p(ŷ|X∖R)): removing them takes the prediction away;
- AOPC: each averaged over top-k% rationales, k in (1, 5, 10, 20, 50) by default;
- deletion curve: p(ŷ) as the top features are removed one at a time;
- top-k log-probability drop and the linear datamodeling score (LDS), as in ContextCite
  (Cohen-Wang et al. 2024): how much removing the k top features costs, and how well the
  summed attributions of the kept features rank held-out ablations by their true log-probability.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

ProbabilityFn = Callable[[np.ndarray], np.ndarray]
AOPC_FRACTIONS = (0.01, 0.05, 0.1, 0.2, 0.5)
ABLATIONS = ("half", "uniform_size")
"""How held-out ablations are drawn: each feature kept with probability 1/2 (ContextCite's own
training distribution, where a Banzhaf-like linear fit is optimal by construction), or a size
uniform over 1..n-1 and then a uniform subset of it (every size weighs the same, as Shapley's)."""


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


def ablation_masks(n: int, count: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """`count` random keep-masks (count, n) of the named kind (see ABLATIONS), for `lds`."""
    if n < 2:
        raise ValueError(f"n: ablations need at least 2 features, got {n}")
    if kind == "half":
        return rng.random((count, n)) < 0.5
    if kind != "uniform_size":
        raise ValueError(f"kind: expected one of {ABLATIONS}, got {kind!r}")
    sizes = rng.integers(1, n, size=count)
    return np.array([np.isin(np.arange(n), rng.choice(n, size=s, replace=False)) for s in sizes]).reshape(count, n)


def lds(values: Sequence[float], masks: np.ndarray, logprobs: Sequence[float]) -> float:
    """Spearman correlation of the kept features' summed attributions with the true log-probabilities.

    `logprobs[j]` is log p(ŷ | only the features kept by masks[j]). 1 is a perfect linear
    datamodel; NaN where either side is constant (nothing to rank).
    """
    predicted = np.asarray(masks, dtype=float) @ np.asarray(values, dtype=float)
    truth = np.asarray(logprobs, dtype=float)
    if predicted.shape != truth.shape or predicted.ndim != 1:
        raise ValueError("lds: one log-probability per mask is needed")
    if np.ptp(predicted) == 0 or np.ptp(truth) == 0:
        return math.nan
    return float(np.corrcoef(_ranks(predicted), _ranks(truth))[0, 1])


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties given their average rank, as Spearman's correlation needs."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]


def top_k_drop(logprob: ProbabilityFn, values: Sequence[float], ks: Sequence[int] = (1, 2, 3)) -> list[float]:
    """log p(ŷ | all) − log p(ŷ | all but the k highest-valued features), for each k; larger is more faithful."""
    order = np.argsort(-np.asarray(values, dtype=float), kind="stable")
    if any(not 0 < k <= len(order) for k in ks):
        raise ValueError(f"ks: each must be in 1..{len(order)}, got {list(ks)}")
    keep = np.ones((len(ks) + 1, len(order)), dtype=bool)
    for row, k in enumerate(ks, start=1):
        keep[row, order[:k]] = False
    scores = np.asarray(logprob(keep), dtype=float).reshape(-1)
    return [float(scores[0] - scores[row]) for row in range(1, len(ks) + 1)]
