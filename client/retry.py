"""Retrying calls a busy server refused (RESOURCE_EXHAUSTED), so waiting clients share it fairly.

The server answers a full queue at once, with gRPC's retry pushback
(`grpc-retry-pushback-ms`: about when a slot frees). Clients that all came back
after the same delay would arrive in step and the quickest would win every slot;
each delay is therefore jittered (uniform between half and one and a half times the
pushback, or full jitter on an exponential backoff when the server sent none), and
the attempts and the call's own deadline bound the wait.
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import grpc

from longshap.proto.wire import PUSHBACK_KEY


@dataclass
class RetryPolicy:
    """How many times, and after how long, a refused call is tried again (attempts=1: never)."""

    attempts: int = 8
    initial_s: float = 0.2
    """The first backoff when the server sent no pushback; doubled per attempt up to `max_s`."""
    max_s: float = 10.0
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.initial_s <= 0 or self.max_s < self.initial_s:
            raise ValueError("retry: attempts >= 1 and 0 < initial_s <= max_s")

    def delay(self, attempt: int, error: grpc.RpcError) -> float | None:
        """Seconds to wait before attempt `attempt + 1`, or None when `error` is not worth retrying or attempts are spent."""
        if attempt >= self.attempts or error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            return None
        pushback = pushback_s(error)
        if pushback is not None:
            return min(self.max_s, pushback * self.rng.uniform(0.5, 1.5))
        return self.rng.uniform(0, min(self.max_s, self.initial_s * 2 ** (attempt - 1)))


def pushback_s(error: grpc.RpcError) -> float | None:
    """The server's retry pushback in seconds, if it sent one."""
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == PUSHBACK_KEY:
            try:
                return max(0.0, int(value) / 1000)
            except ValueError:
                return None
    return None


class Deadline:
    """What is left of a call's timeout across its attempts (None: no deadline)."""

    def __init__(self, timeout: float | None) -> None:
        self.end = None if timeout is None else time.monotonic() + timeout

    def left(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def allows(self, wait: float) -> bool:
        left = self.left()
        return left is None or wait < left
