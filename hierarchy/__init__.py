"""LongSHAP's engine: hierarchical Shapley explanations of an LLM's answer over long context.

Four independent axes, each its own module: what a feature is (`segmentation`),
what a coalition is worth (`values`), how coalitions are chosen (`estimators`) and
what runs the model (`engines`, one protocol with a per-request run context).
`explainer` walks the hierarchy.

Names are imported on first use, and torch only once a model is loaded, so
`import longshap.hierarchy` (and the CLI's --help) stays fast.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Estimate": "longshap.hierarchy.estimators",
    "estimate": "longshap.hierarchy.estimators",
    "Explainer": "longshap.hierarchy.explainer",
    "Explanation": "longshap.hierarchy.results",
}

if TYPE_CHECKING:
    from longshap.hierarchy.estimators import Estimate, estimate
    from longshap.hierarchy.explainer import Explainer
    from longshap.hierarchy.results import Explanation

__all__ = ["Estimate", "Explainer", "Explanation", "estimate"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
