"""Cancellation, deadlines and a full queue free or protect the single worker."""
from __future__ import annotations

import time

import grpc
import pytest

from serving import quick_request, slow_request, wait_until


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
