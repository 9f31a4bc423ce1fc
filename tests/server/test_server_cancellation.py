"""Cancellation, deadlines and a full queue free or protect the single worker."""
from __future__ import annotations

import asyncio
import threading
import time

import grpc
import pytest

from longshap.server.service import ExplainerService, RequestLog
from serving import LIMITS, quick_request, slow_request, wait_until


def _first_event_seconds(stub) -> float:
    """Seconds until a quick request's first event arrives (the worker must be free for it)."""
    started = time.monotonic()
    call = stub.Explain(quick_request(), timeout=30)
    next(call)
    elapsed = time.monotonic() - started
    assert [e.WhichOneof("event") for e in call][-1] == "done"
    return elapsed


def test_client_cancellation_stops_the_work_and_frees_the_worker(stub, tiny_server):
    call = stub.Explain(slow_request())
    assert next(call).HasField("answer")  # the worker is now running it
    assert next(call).HasField("level_start")
    call.cancel()
    assert wait_until(lambda: tiny_server.running.service.worker.pending == 0, 5) < 1.5
    assert _first_event_seconds(stub) < 1.5


def test_deadline_is_honoured_and_frees_the_worker(stub, tiny_server):
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        for _ in stub.Explain(slow_request(), timeout=1.0):
            pass
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 3
    assert wait_until(lambda: tiny_server.running.service.worker.pending == 0, 5) < 1.5
    assert _first_event_seconds(stub) < 1.5


def test_full_queue_answers_resource_exhausted_at_once(stub, tiny_server):
    running = stub.Explain(slow_request())
    next(running)
    waiting = stub.Explain(slow_request())
    waiting.initial_metadata()  # sent once the server has queued it
    assert tiny_server.running.service.worker.pending == 2
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as failure:
        list(stub.Explain(quick_request(), timeout=30))
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "busy" in failure.value.details()
    assert time.monotonic() - started < 2
    running.cancel()
    waiting.cancel()
    wait_until(lambda: tiny_server.running.service.worker.pending == 0, 5)
    assert _first_event_seconds(stub) < 1.5


class _CancelledWhileSendingMetadata:
    """A context whose client is gone by the time the handler sends the initial metadata."""

    def time_remaining(self) -> None:
        return None

    async def send_initial_metadata(self, metadata) -> None:
        raise asyncio.CancelledError


def test_a_client_gone_before_the_metadata_still_stops_its_job(tiny_explainer):
    # CI once hung here: the job was queued, the cancel landed on send_initial_metadata, and the
    # job then ran its 10**6-evaluation budget with nobody listening, blocking every later request.
    service = ExplainerService({"tiny": tiny_explainer}, "tiny", LIMITS)
    started, stopped = threading.Event(), threading.Event()

    def job(emit, should_stop) -> None:
        started.set()
        if wait_until(should_stop, 5) < 1:
            stopped.set()

    async def consume() -> None:
        async for _ in service._run(job, _CancelledWhileSendingMetadata(), RequestLog("Explain")):
            pass

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(consume())
    assert wait_until(lambda: service.worker.pending == 0, 5) < 1
    assert stopped.is_set() == started.is_set(), "a job that started must have been told to stop"
