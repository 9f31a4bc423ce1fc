"""The Explainer gRPC service: validation, the worker hand-off, streaming and request logs."""
from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Mapping

import grpc
from google.protobuf.message import DecodeError

from longshap.hierarchy import Explainer
from longshap.hierarchy.errors import Cancelled
from longshap.hierarchy.request import RequestError as EngineRequestError
from longshap.proto.wire import PUSHBACK_KEY, SERVICE_NAME, event_to_proto, pb, pb_grpc
from longshap.server import jobs
from longshap.server.config import Limits
from longshap.server.errors import RequestError
from longshap.server.validation import explain_request, rerank_arguments, resolve_model
from longshap.server.worker import QueueFull, Worker

log = logging.getLogger("longshap.request")
_END = object()


@dataclass
class _Failure:
    error: BaseException


@dataclass(frozen=True)
class UnreadableRequest:
    """The bytes of a request that do not parse: corrupt or truncated protobuf, or a string that is not UTF-8.

    gRPC would answer a deserializer's exception with UNKNOWN and log a traceback per
    call; the handler answers this one INVALID_ARGUMENT with a plain message instead.
    """

    message: str

    @classmethod
    def parser(cls, message_type) -> Callable[[bytes], object]:
        name = message_type.DESCRIPTOR.full_name

        def parse(data: bytes) -> object:
            try:
                return message_type.FromString(data)
            except DecodeError:
                return cls(f"request: not a valid {name} message (corrupt or truncated protobuf, or a string that is not valid UTF-8)")

        return parse


def add_to_server(service: "ExplainerService", server: grpc.aio.Server) -> None:
    """Register the service with request parsers that turn unreadable bytes into INVALID_ARGUMENT."""
    handlers = {
        "Explain": grpc.unary_stream_rpc_method_handler(
            service.Explain, UnreadableRequest.parser(pb.ExplainRequest), pb.ExplainEvent.SerializeToString
        ),
        "Rerank": grpc.unary_unary_rpc_method_handler(
            service.Rerank, UnreadableRequest.parser(pb.RerankRequest), pb.RerankResponse.SerializeToString
        ),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            service.ListModels, UnreadableRequest.parser(pb.ListModelsRequest), pb.ListModelsResponse.SerializeToString
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))


@dataclass
class RequestLog:
    """What one request did, logged once as a JSON line when it ends."""

    method: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    model: str = ""
    documents: int = 0
    characters: int = 0
    budget: int | None = None
    evaluations: int = 0
    outcome: str = "OK"
    started: float = field(default_factory=time.perf_counter)

    def emit(self) -> None:
        fields = {k: v for k, v in self.__dict__.items() if k != "started"}
        fields["wall_seconds"] = round(time.perf_counter() - self.started, 3)
        log.info("request", extra={"fields": fields})


def _describe(record: RequestLog, prompt: pb.QAPrompt | pb.ClassificationPrompt | None, budget: int | None) -> None:
    """Request sizes for the log, taken before validation so that refused requests are described too."""
    if isinstance(prompt, pb.QAPrompt):
        record.documents = len(prompt.documents)
        record.characters = len(prompt.question) + sum(len(d.text) for d in prompt.documents)
    elif prompt is not None:
        record.characters = len(prompt.text)
    record.budget = budget


def _refuse_unreadable(request: object) -> None:
    if isinstance(request, UnreadableRequest):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.message)


class ExplainerService(pb_grpc.ExplainerServicer):
    """Serves the configured explainers; every request runs on one bounded pool of workers.

    Explainers are shared by the requests that run at once: each request has its own
    run context, and their engines (a batcher, Ray replicas) merge or spread the work.
    """

    def __init__(self, explainers: Mapping[str, Explainer], default: str, limits: Limits, concurrency: int = 1) -> None:
        self.explainers = dict(explainers)
        self.default = default
        self.limits = limits
        self.worker = Worker(limits.queue_size, concurrency)

    async def ListModels(self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext) -> pb.ListModelsResponse:
        if isinstance(request, UnreadableRequest):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        models = [
            pb.ModelInfo(name=name, is_default=name == self.default, architecture=explainer.architecture)
            for name, explainer in self.explainers.items()
        ]
        return pb.ListModelsResponse(models=models, limits=self.limits.to_proto())

    async def Explain(self, request: pb.ExplainRequest, context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ExplainEvent]:
        record = RequestLog("Explain")
        readable = not isinstance(request, UnreadableRequest)
        kind = request.WhichOneof("prompt") if readable else None
        if readable:
            _describe(record, getattr(request, kind) if kind else None, request.budget if request.HasField("budget") else None)
        async with self._outcome(context, record):
            _refuse_unreadable(request)
            record.model = resolve_model(request.model, self.explainers, self.default)
            engine_request = explain_request(request, self.limits)
            explainer = self.explainers[record.model]

            job = functools.partial(jobs.explain, explainer, engine_request)
            async for event in self._run(job, context, record):
                if event.kind == "done":
                    record.evaluations = event.explanation.stats.get("evaluations", 0)
                yield event_to_proto(event, record.id)

    async def Rerank(self, request: pb.RerankRequest, context: grpc.aio.ServicerContext) -> pb.RerankResponse:
        record = RequestLog("Rerank")
        if not isinstance(request, UnreadableRequest):
            _describe(record, request.prompt if request.HasField("prompt") else None, request.budget if request.HasField("budget") else None)
        async with self._outcome(context, record):
            _refuse_unreadable(request)
            record.model = resolve_model(request.model, self.explainers, self.default)
            engine_request, candidates = rerank_arguments(request, self.limits)
            explainer = self.explainers[record.model]

            job = functools.partial(jobs.rerank, explainer, engine_request, candidates)
            (response,) = [r async for r in self._run(job, context, record)]
            record.evaluations = response.summary.evaluations
            return response

    @staticmethod
    @contextlib.asynccontextmanager
    async def _outcome(context: grpc.aio.ServicerContext, record: RequestLog):
        """Answer a refused or failed request with its status, and log every request once."""
        try:
            yield
        except RequestError as error:
            record.outcome = error.code.name
            if error.retry_after_s is not None:
                context.set_trailing_metadata(((PUSHBACK_KEY, str(round(error.retry_after_s * 1000))),))
            await context.abort(error.code, error.message)
        finally:
            record.emit()

    async def _run(self, job: Callable, context: grpc.aio.ServicerContext, record: RequestLog) -> AsyncIterator:
        """Run `job(emit, should_stop)` on the worker and yield what it emits, as it emits it.

        Leaving this generator early (client cancelled, deadline, shutdown) sets the stop
        flag, which the engine polls before every decoder layer, so the worker is freed
        within a fraction of a second; a job still in the queue is dropped at once.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()
        remaining = context.time_remaining()
        deadline = None if remaining is None else time.monotonic() + remaining

        def should_stop() -> bool:
            return stop.is_set() or (deadline is not None and time.monotonic() > deadline)

        def emit(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone: nobody listens any more
                stop.set()

        def work() -> None:
            try:
                if should_stop():
                    raise Cancelled("cancelled while queued")
                job(emit, should_stop)
                emit(_END)
            except BaseException as error:  # noqa: BLE001 - every failure goes back to the handler
                emit(_Failure(error))

        try:
            future = self.worker.submit(work)
        except QueueFull as error:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error), error.retry_after_s) from None
        try:
            # Inside the try: a client that cancels while the metadata is on its way must still stop the job.
            await context.send_initial_metadata((("x-request-id", record.id),))
            while (item := await queue.get()) is not _END:
                if isinstance(item, _Failure):
                    raise self._status(item.error, deadline, record.id)
                yield item
        except asyncio.CancelledError:
            record.outcome = "DEADLINE_EXCEEDED" if deadline is not None and time.monotonic() > deadline else "CANCELLED"
            raise
        finally:
            stop.set()
            future.cancel()  # still queued: give the slot back now, not when the worker reaches it

    @staticmethod
    def _status(error: BaseException, deadline: float | None, request_id: str) -> RequestError:
        """Map a worker failure to the status the client sees: only the request's own faults are INVALID_ARGUMENT."""
        if isinstance(error, Cancelled):
            expired = deadline is not None and time.monotonic() > deadline
            return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED, str(error))
        if isinstance(error, EngineRequestError):
            return RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        log.error("request failed", exc_info=error, extra={"fields": {"id": request_id}})
        return RequestError(grpc.StatusCode.INTERNAL, f"internal error (request {request_id}): {type(error).__name__}: {error}")
