"""The error a server check raises: a refusal with the gRPC status to answer."""
from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request the server refuses, with the gRPC status to answer."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)
