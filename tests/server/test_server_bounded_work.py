"""What the limits bound: the placeholder's cost at the token level, the total budget, and a full queue's pushback."""
from __future__ import annotations

import contextlib
import threading

import grpc
import pytest
from longshap.client.api import LongShapClient
from longshap.client.retry import RetryPolicy
from longshap.proto.wire import PUSHBACK_KEY
from longshap.proto.wire import pb
from longshap.server.config import Limits
from longshap.server.errors import RequestError
from longshap.server.validation import explain_request
from serving import qa_request, quick_request, slow_request, wait_until


def _refusal(message: pb.ExplainRequest, limits: Limits) -> str:
    with pytest.raises(RequestError) as refused:
        explain_request(message, limits)
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    return refused.value.message


def test_at_the_token_level_each_character_may_be_a_unit_that_the_placeholder_replaces():
    """A one-word 100-character document with a 2,000-character placeholder was costed as 2 units."""
    message = pb.ExplainRequest(
        qa=pb.QAPrompt(question="q", documents=[pb.Document(text="x" * 100)]), levels=["token"], budget=4, placeholder="p" * 2000,
    )
    assert "placeholder of 2000 x 101 removable units" in _refusal(message, Limits())
    message.levels[:] = ["word"]  # as words the same text is one unit: accepted
    explain_request(message, Limits())


def test_a_total_budget_beyond_what_the_levels_may_spend_is_refused():
    limits = Limits(max_budget=100)
    message = qa_request(total_budget=1_000_000)
    assert _refusal(message, limits).startswith("total_budget: must be an integer in 1..300")
    message.total_budget = 300
    explain_request(message, limits)


@contextlib.contextmanager
def _full_queue(server, stub):
    """One request running and one waiting (queue_size=1): the next is refused until they end."""
    running = stub.Explain(slow_request())
    next(running)
    waiting = stub.Explain(slow_request())
    waiting.initial_metadata()
    try:
        wait_until(lambda: server.running.service.worker.pending == 2, 10)
        yield lambda: (running.cancel(), waiting.cancel())
    finally:
        running.cancel()
        waiting.cancel()


def test_a_full_queue_tells_when_to_retry_and_the_library_retries_until_served(tiny_server, stub):
    with _full_queue(tiny_server, stub) as release:
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Explain(quick_request(), timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        pushback = dict(refused.value.trailing_metadata())[PUSHBACK_KEY]
        assert int(pushback) >= 50 and "retry in about" in refused.value.details()
        # The library waits and tries again; once the slots free up it is served.
        threading.Timer(1.0, release).start()
        with LongShapClient(tiny_server.address, timeout=60, retry=RetryPolicy(attempts=50, initial_s=0.05, max_s=0.5)) as client:
            events = list(client.explain_events(quick_request()))
        assert events[-1].HasField("done")


def test_without_retries_the_library_reports_the_refusal(tiny_server, stub):
    with _full_queue(tiny_server, stub):
        with LongShapClient(tiny_server.address, timeout=30, retry=RetryPolicy(attempts=1)) as client:
            with pytest.raises(Exception, match="RESOURCE_EXHAUSTED"):
                list(client.explain_events(quick_request()))
