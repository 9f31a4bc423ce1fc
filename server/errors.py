"""The error a server check raises: a refusal with the gRPC status to answer."""
from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request the server refuses, with the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s
        """Sent as gRPC's retry pushback (`grpc-retry-pushback-ms`): when trying again may succeed."""


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)
