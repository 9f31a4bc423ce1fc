"""Server settings: listening options, the operator's limits (declared in `server.limits`) and model specs (light to import: no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from longshap.hierarchy.options import DEFAULT_MODEL
from longshap.server.limits import Limits

__all__ = ["DEFAULT_MODEL", "ServerConfig", "parse_model_spec"]



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
