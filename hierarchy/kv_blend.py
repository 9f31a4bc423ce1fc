"""kv_mode blend for one request: its blend plan, and the self-check that decides whether the request may keep it.

Blend trades exactness for cost: each document's KV states are computed once and
re-encoded for every coalition (`engines.hf_blend`). Whether that trade is good
depends on the model and the prompt, so every blended request measures it before
any level runs: the exact model values all documents, none, and a few random
document coalitions; the blend values the same ones; the differences, relative to
|v(all) - v(none)|, are reported, and past the tolerance the request is explained
exactly instead. Those exact values are kept by the request's game, so v(all) and
v(none), which set the expansion thresholds and the total effect, are always exact.

Documents are the cached unit at every level: in a sentence or word game the
documents kept whole are read from their states and the document being explained,
cut by the coalition, runs in full.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from longshap.hierarchy.engines.base import BLEND
from longshap.hierarchy.engines.blend_plan import plan_from_spans
from longshap.hierarchy.errors import RequestError
from longshap.hierarchy.segmentation import ROOT

if TYPE_CHECKING:
    from longshap.hierarchy.engines.view import ModelView
    from longshap.hierarchy.prompt import QAPrompt
    from longshap.hierarchy.request import ExplainRequest
    from longshap.hierarchy.segmentation import FeatureTree
    from longshap.hierarchy.subgames import RequestGame
    from longshap.hierarchy.values import ValueFunction


@dataclass
class SelfCheck:
    """How blended values compared with the exact model's on the checked coalitions, and what the request did about it."""

    coalitions: int
    max_difference: float
    """Largest |blended - exact| over the checked coalitions, relative to |v(all) - v(none)| (inf: no effect to compare with)."""
    mean_difference: float
    tolerance: float
    recompute: float
    fallback: bool
    reason: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def check_engine(view: ModelView) -> None:
    """Refuse kv_mode blend, by name, on an engine that cannot re-encode cached states."""
    if BLEND not in view.engine.capabilities:
        raise RequestError(
            "kv_mode", f"the {view.engine.architecture} model on this engine cannot blend cached states (blend needs the transformers "
            "engine, a RoPE model such as Llama, Qwen or Gemma, and attention that takes masks); use kv_mode exact",
        )


def start_blend(
    view: ModelView, prompt: QAPrompt, tree: FeatureTree, game: RequestGame, value_fn: ValueFunction, request: ExplainRequest,
) -> SelfCheck:
    """Check the blend on this request's documents; leave it on in the run context only if it passed."""
    documents = tree.expand(ROOT, "document")
    coalitions = _coalitions(documents, request.blend_checks, np.random.default_rng([request.seed, 0xB1E4D]))
    prompts = [prompt.render(tree, absent) for absent in coalitions]
    exact = np.atleast_2d(value_fn(prompts))
    for absent, values in zip(coalitions, exact):
        game.remember(absent, values)

    def outcome(fallback: bool, reason: str = "", largest: float = math.nan, mean: float = math.nan) -> SelfCheck:
        return SelfCheck(len(coalitions), largest, mean, request.blend_tolerance, request.blend_recompute, fallback, reason)

    if len(documents) < 2:
        return outcome(True, "a single document: there is nothing to blend")
    full = prompt.render(tree)
    ids, offsets = view.engine.encode_offsets(full, special_tokens=True)
    try:
        plan = plan_from_spans(ids, offsets, prompt.document_spans(), request.blend_recompute)
    except ValueError as error:  # a document whose tokens all merged into its neighbours' blocks
        return outcome(True, f"the documents cannot be cached apart: {error}")
    view.context.blend = plan
    blended = np.atleast_2d(value_fn(prompts))
    effect = abs(exact[0, 0] - exact[1, 0])
    gaps = np.abs(blended[:, 0] - exact[:, 0])
    relative = gaps / effect if effect > 0 else np.where(gaps > 0, math.inf, 0.0)
    largest, mean = float(relative.max()), float(relative.mean())
    if largest <= request.blend_tolerance:
        return outcome(False, largest=largest, mean=mean)
    view.context.blend = None
    reason = "v(all) equals v(none): no effect to compare differences with" if effect == 0 else (
        f"blended values differed from exact ones by up to {largest:.3g} of |v(all) - v(none)|, over the tolerance")
    return outcome(True, reason, largest, mean)


def _coalitions(documents: list[str], checks: int, rng: np.random.Generator) -> list[frozenset[str]]:
    """Absent sets: none, all, then `checks` distinct random ones of uniformly drawn size 1..n-1 (fewer if there are not that many)."""
    chosen = [frozenset(), frozenset(documents)]
    n = len(documents)
    possible = 2**n - 2
    while len(chosen) - 2 < min(checks, possible):
        size = int(rng.integers(1, n))
        absent = frozenset(rng.choice(documents, size=size, replace=False).tolist())
        if absent not in chosen:
            chosen.append(absent)
    return chosen
