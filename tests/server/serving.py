"""Servers on 127.0.0.1 (port 0) running the tiny model, and requests that are quick or that run until cancelled.

Shared by tests/server and tests/client (whose conftest puts this folder on the path).
"""
from __future__ import annotations

import time

import grpc
import pytest

from longshap.proto.wire import pb, pb_grpc
from longshap.server.app import ServerConfig, ServerThread
from longshap.server.config import Limits

LIMITS = Limits(max_documents=8, max_characters=5000, max_budget=10**6, max_candidates=4, queue_size=1)
DOCUMENTS = [
    {"title": "Paris", "text": "Paris is the capital of France. It is on the Seine."},
    {"title": "Berlin", "text": "Berlin is the capital of Germany. Dr. Smith lives in the U.S. now."},
]
QUESTION = "What is the capital of France?"
LONG_TEXT = " ".join(["the quick brown fox jumps over the lazy dog"] * 8)


def qa_request(**fields) -> pb.ExplainRequest:
    documents = [pb.Document(**d) for d in DOCUMENTS]
    return pb.ExplainRequest(qa=pb.QAPrompt(question=QUESTION, documents=documents), **fields)


def quick_request() -> pb.ExplainRequest:
    """A classification explained in a fraction of a second (no answer decoding)."""
    return pb.ExplainRequest(classification=pb.ClassificationPrompt(text="a charming journey", labels=["negative", "positive"]), budget=10)


def slow_request() -> pb.ExplainRequest:
    """72 words and a huge budget: the tiny model needs many minutes, so only cancellation ends it."""
    return pb.ExplainRequest(classification=pb.ClassificationPrompt(text=LONG_TEXT, labels=["negative", "positive"]), budget=10**6)


def wait_until(condition, timeout: float) -> float:
    """Seconds until `condition()` held; fails after `timeout` (polls, never a blind sleep)."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture(scope="session")
def tiny_server(tiny_llama_dir):
    """The tiny model served as 'tiny' with small limits and a one-slot queue."""
    from longshap.hierarchy import Explainer

    server = ServerThread(ServerConfig(port=0, limits=LIMITS), {"tiny": Explainer.from_pretrained(str(tiny_llama_dir))})
    with server:
        yield server


@pytest.fixture
def stub(tiny_server):
    with grpc.insecure_channel(tiny_server.address) as channel:
        yield pb_grpc.ExplainerStub(channel)
    wait_until(lambda: tiny_server.running.service.worker.pending == 0, 10)
