"""Server settings: limits on requests, listening options and model specs (light to import: no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from longshap.proto.wire import pb

DEFAULT_MODEL = "gemma-3-270m"  # hierarchy.models.DEFAULT_MODEL, without importing torch for --help


@dataclass(frozen=True)
class Limits:
    """Operator limits on one request, reported by ListModels."""

    max_documents: int = 64
    max_characters: int = 200_000
    """Characters one evaluation may read: every prompt field, the placeholder per unit, the continuation."""
    max_budget: int = 10_000
    max_candidates: int = 16
    queue_size: int = 4
    max_labels: int = 16
    max_field_characters: int = 2_000

    def to_proto(self) -> pb.Limits:
        return pb.Limits(**self.__dict__)


@dataclass
class ServerConfig:
    """How to listen (TLS when a certificate and key are given; bearer auth when a token is)."""

    host: str = "127.0.0.1"
    port: int = 50051
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = None
    grace_seconds: float = 10.0
    concurrency: int = 1
    """Requests run at once; their model work is merged (batching) or spread over replicas."""
    batching: bool = True
    """Merge the forward passes of concurrent requests (only matters with concurrency > 1)."""


def parse_model_spec(spec: str) -> tuple[str, str | None]:
    """`NAME=PATH`, a plain PATH (named after its directory) or the default model's name -> (name, path)."""
    if "=" in spec:
        name, path = spec.split("=", 1)
    elif spec == DEFAULT_MODEL:
        return DEFAULT_MODEL, None
    else:
        name, path = Path(spec).expanduser().resolve().name, spec
    if not name or any(sep in name for sep in "/\\") or name.startswith((".", "~")):
        raise ValueError(f"--model {spec!r}: the name must be non-empty and not a path")
    return name, path or None
