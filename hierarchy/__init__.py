"""LongSHAP's engine: hierarchical Shapley explanations of an LLM's answer over long context.

Three independent axes, each its own module: what a feature is (`segmentation`),
what a coalition is worth (`values` over the batched `scorer`), and how coalitions
are chosen (`estimators`). `explainer` walks the hierarchy.
"""
from hierarchy.estimators import Estimate, estimate
from hierarchy.explainer import Explainer
from hierarchy.results import Explanation

__all__ = ["Estimate", "Explainer", "Explanation", "estimate"]
