"""A small Python client for a LongSHAP server.

    with LongShapClient("127.0.0.1:50051") as client:
        for event in client.explain(question="...", documents=[{"title": "", "text": "..."}], budget=60):
            print(event.WhichOneof("event"))

Events are `longshap.v1.ExplainEvent` messages; `longshap.proto.wire.collect(events)` turns a
stream into the engine's Explanation JSON.
"""
from __future__ import annotations

import time
from typing import Any, Iterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from longshap.hierarchy.options import OPTIONS, Option
from longshap.hierarchy.segmentation import LEVELS
from longshap.client.retry import Deadline, RetryPolicy
from longshap.proto.wire import SERVICE_NAME, pb, pb_grpc

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
"""Word-level events of long documents can pass gRPC's default 4 MiB limit."""


class LongShapError(Exception):
    """A failed call: the gRPC status code and the server's message."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> "LongShapError":
        return cls(error.code(), error.details() or "")


def explain_request(
    question: str | None = None,
    documents: Sequence[Mapping[str, str]] | None = None,
    text: str | None = None,
    labels: Sequence[str] | None = None,
    instruction: str = "",
    model: str = "",
    **options: Any,
) -> pb.ExplainRequest:
    """Build an ExplainRequest: a QA prompt (question, documents) or a classification one (text, labels).

    `options` are those of `longshap.hierarchy.options.OPTIONS` (target, levels, budget,
    ...); one left out or None keeps the engine's default. A per-level option takes one
    number for every level or a mapping by level name.
    """
    for name in options:
        if name not in OPTIONS:
            raise TypeError(f"explain_request() got an unexpected keyword argument {name!r}; the options are {', '.join(OPTIONS)}")
    if text is not None or labels is not None:
        prompt = {"classification": pb.ClassificationPrompt(instruction=instruction, text=text or "", labels=list(labels or []))}
    else:
        docs = [pb.Document(title=d.get("title", "") or "", text=d.get("text", "")) for d in documents or []]
        prompt = {"qa": pb.QAPrompt(instruction=instruction, documents=docs, question=question or "")}
    fields = {name: _wire_value(OPTIONS[name], value) for name, value in options.items() if value is not None}
    return pb.ExplainRequest(model=model, **fields, **prompt)


def _wire_value(option: Option, value: Any) -> Any:
    """An option's value as its field takes it: a per-level number for every level, one level name as a list."""
    if option.per_level and not isinstance(value, Mapping):
        return {level: value for level in LEVELS}
    if option.repeated:
        return [value] if isinstance(value, str) else list(value)
    return value


def rerank_request(question: str, documents: Sequence[Mapping[str, str]], candidates: Sequence[str], model: str = "", budget: int | None = None, seed: int = 0, method: str = "") -> pb.RerankRequest:
    docs = [pb.Document(title=d.get("title", "") or "", text=d.get("text", "")) for d in documents]
    return pb.RerankRequest(
        model=model, prompt=pb.QAPrompt(question=question, documents=docs), candidates=list(candidates), budget=budget, seed=seed, method=method,
    )


class LongShapClient:
    """Calls a LongSHAP server; `token` adds bearer auth, `tls_ca` (PEM bytes) turns on TLS.

    A call the busy server refuses (RESOURCE_EXHAUSTED) is tried again after the
    server's pushback, jittered (`retry`; `RetryPolicy(attempts=1)` never retries),
    within the call's timeout.
    """

    def __init__(
        self, address: str, token: str | None = None, tls_ca: bytes | None = None, timeout: float | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        if tls_ca is not None:
            self.channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_ca), CHANNEL_OPTIONS)
        else:
            self.channel = grpc.insecure_channel(address, CHANNEL_OPTIONS)
        self.stub = pb_grpc.ExplainerStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.timeout = timeout
        self.retry = retry or RetryPolicy()

    def explain(self, timeout: float | None = None, **request) -> Iterator[pb.ExplainEvent]:
        """Stream the events of one explanation (see `explain_request` for the options)."""
        yield from self.explain_events(explain_request(**request), timeout)

    def explain_events(self, request: pb.ExplainRequest, timeout: float | None = None) -> Iterator[pb.ExplainEvent]:
        """Stream the events of a prepared request; leaving the loop early cancels the call."""
        deadline = Deadline(timeout or self.timeout)
        attempt = 0
        while True:
            attempt += 1
            call = self.stub.Explain(request, timeout=deadline.left(), metadata=self.metadata)
            started = False
            try:
                for event in call:
                    started = True
                    yield event
                return
            except grpc.RpcError as error:
                if started:  # events already reached the caller: a retry would repeat them
                    raise LongShapError.from_rpc(error) from None
                self._back_off(attempt, error, deadline)
            finally:
                call.cancel()

    def rerank(self, request: pb.RerankRequest | None = None, timeout: float | None = None, **fields) -> pb.RerankResponse:
        """Rank candidate answers by document support, then the documents for the best one (see `rerank_request`)."""
        return self._unary(self.stub.Rerank, request or rerank_request(**fields), timeout)

    def list_models(self, timeout: float | None = None) -> pb.ListModelsResponse:
        return self._unary(self.stub.ListModels, pb.ListModelsRequest(), timeout)

    def health(self, service: str = SERVICE_NAME, timeout: float | None = 5.0) -> str:
        """The health status name (SERVING, NOT_SERVING, ...)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        response = self._unary(stub.Check, health_pb2.HealthCheckRequest(service=service), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def _unary(self, method, request, timeout: float | None):
        deadline = Deadline(timeout or self.timeout)
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(request, timeout=deadline.left(), metadata=self.metadata)
            except grpc.RpcError as error:
                self._back_off(attempt, error, deadline)

    def _back_off(self, attempt: int, error: grpc.RpcError, deadline: Deadline) -> None:
        """Wait before trying a refused call again, or raise its failure when the policy or the deadline says stop."""
        wait = self.retry.delay(attempt, error)
        if wait is None or not deadline.allows(wait):
            raise LongShapError.from_rpc(error) from None
        time.sleep(wait)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "LongShapClient":
        return self

    def __exit__(self, *_) -> None:
        self.close()
