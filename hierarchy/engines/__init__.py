"""What runs the model: one protocol (`base.Engine`), its implementations, and a request's view of them.

`TransformersEngine` (a Hugging Face model in this process) is the engine; servers
wrap engines in others that implement the same protocol (a batcher merging the calls
of concurrent requests, Ray replicas). Every call carries the request's `RunContext`.
Names load on first use, so importing this package does not import torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from longshap.hierarchy.engines.base import (
    ANSWER_TREE, BLEND, DRAFT, GRADIENTS, PREFIX_REUSE, CacheScope, Engine, EngineStats, RunContext,
)
from longshap.hierarchy.engines.view import ModelView

if TYPE_CHECKING:
    from longshap.hierarchy.engines.hf_engine import TransformersEngine

__all__ = [
    "ANSWER_TREE", "BLEND", "DRAFT", "GRADIENTS", "PREFIX_REUSE", "CacheScope", "Engine", "EngineStats", "ModelView", "RunContext",
    "TransformersEngine",
]


def __getattr__(name: str) -> Any:
    if name == "TransformersEngine":
        return importlib.import_module("longshap.hierarchy.engines.hf_engine").TransformersEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
