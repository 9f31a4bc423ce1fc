"""Cross-request batching: concurrent requests share forward passes and get the values they would get alone."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from longshap.hierarchy.errors import Cancelled
from longshap.proto.wire import collect, pb_grpc
from longshap.server.app import ServerConfig, ServerThread
from longshap.hierarchy import Explainer
from longshap.hierarchy.engines import RunContext
from longshap.server.batching import BatchingEngine
from serving import (
    DOCUMENTS,
    LIMITS,
    QUESTION,
    qa_request,
    quick_request,
    slow_request,
    wait_until,
)

REQUESTS = [
    {"question": QUESTION, "documents": DOCUMENTS, "budget": 24, "seed": 1},
    {"question": QUESTION, "documents": DOCUMENTS, "budget": 24, "seed": 2, "value": "answers", "max_new_tokens": 4},
    {"question": "Who lives in the U.S.?", "documents": DOCUMENTS[::-1], "budget": 24, "seed": 3, "target": "Dr. Smith"},
    {"text": "a charming and often affecting journey", "labels": ["negative", "positive"], "budget": 30, "seed": 4},
]


def _values(explanation) -> list[tuple[str, float, float]]:
    return [(f.id, f.value, f.stderr) for level in explanation.levels for f in level.features]


class _Counting:
    """An engine that counts the rows of its calls and what they cost (wraps the real one)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.capabilities, self.architecture, self.max_batch_tokens = inner.capabilities, inner.architecture, inner.max_batch_tokens
        self.calls: list[int] = []
        self.tokens: dict[str, int] = {}

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def _counted(self, method, rows, context, *args):
        self.calls.append(len(rows))
        results = getattr(self.inner, method)(rows, *args, context) if method != "greedy" else self.inner.greedy(rows, args[0], context, *args[1:])
        for name, value in context.stats.as_dict().items():
            self.tokens[name] = self.tokens.get(name, 0) + value
        return results

    def score(self, rows, context):
        return self._counted("score", rows, context)

    def score_tokens(self, rows, context):
        return self._counted("score_tokens", rows, context)

    def greedy(self, rows, max_new_tokens, context, tree=None):
        return self._counted("greedy", rows, context, max_new_tokens, tree)


def test_concurrent_requests_share_passes_and_equal_single_requests(tiny_explainer):
    alone = [tiny_explainer.explain(**request) for request in REQUESTS]
    counting = _Counting(tiny_explainer.engine)
    batcher = BatchingEngine(counting, window_s=0.05)
    shared = Explainer(batcher)
    start = threading.Barrier(len(REQUESTS))

    def run(request):
        start.wait()
        return shared.explain(**request)

    try:
        with ThreadPoolExecutor(len(REQUESTS)) as pool:
            together = list(pool.map(run, REQUESTS))
    finally:
        batcher.close()
    assert batcher.merged_calls > 0
    for one, merged in zip(alone, together, strict=True):
        assert merged.answer == one.answer
        ids, values, stderr = zip(*_values(one))
        got_ids, got_values, got_stderr = zip(*_values(merged))
        assert got_ids == ids
        np.testing.assert_allclose(got_values, values, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(got_stderr, stderr, atol=1e-4, rtol=1e-4)
        assert merged.stats["evaluations"] == one.stats["evaluations"]
        assert merged.stats["coalitions"] == one.stats["coalitions"]
    # The merged calls' costs are shared out exactly: the requests' shares add up to what the model did.
    for name in ("forward_tokens", "reused_tokens", "forward_passes", "decode_steps"):
        assert sum(merged.stats[name] for merged in together) == counting.tokens.get(name, 0)
    assert all(merged.stats["forward_tokens"] > 0 for merged in together)


def test_gradient_methods_run_through_the_batcher_with_in_process_values(tiny_explainer):
    request = {"question": QUESTION, "documents": DOCUMENTS, "target": "Paris", "method": "integrated_gradients", "budget": 8}
    alone = tiny_explainer.explain(**request)
    batcher = BatchingEngine(tiny_explainer.engine)
    try:
        batched = Explainer(batcher).explain(**request)
    finally:
        batcher.close()
    np.testing.assert_allclose([v for _, v, _ in _values(batched)], [v for _, v, _ in _values(alone)], atol=1e-6)
    assert batched.stats["gradient_rows"] == alone.stats["gradient_rows"]


def test_a_cancelled_caller_returns_at_once_while_the_merged_call_goes_on(tiny_explainer):
    started, release = threading.Event(), threading.Event()
    engine = tiny_explainer.engine

    class Blocking(_Counting):
        def greedy(self, rows, max_new_tokens, context, tree=None):
            started.set()
            release.wait(10)
            return super().greedy(rows, max_new_tokens, context, tree)

    batcher = BatchingEngine(Blocking(engine))
    stop = threading.Event()
    rows = [engine.encode("a charming journey")]
    waiting = RunContext()
    try:
        other = ThreadPoolExecutor(1).submit(batcher.greedy, rows, 2, waiting)
        started.wait(10)
        failed = ThreadPoolExecutor(1).submit(batcher.greedy, rows, 2, RunContext(stop.is_set))
        stop.set()
        with pytest.raises(Cancelled):
            failed.result(timeout=2)
        release.set()
        assert len(other.result(timeout=30)) == 1
        assert waiting.stats.forward_passes >= 1
    finally:
        release.set()
        batcher.close()


def test_server_runs_concurrent_requests_with_single_request_values(tiny_llama_dir, tiny_explainer):
    from longshap.hierarchy import Explainer

    config = ServerConfig(port=0, limits=LIMITS, concurrency=3)
    server = ServerThread(config, {"tiny": Explainer.from_pretrained(str(tiny_llama_dir))})
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        requests = [qa_request(budget=30, seed=seed) for seed in (1, 2, 3)]
        with ThreadPoolExecutor(3) as pool:
            streams = list(pool.map(lambda r: list(stub.Explain(r, timeout=120)), requests))
        assert isinstance(server.running.service.explainers["tiny"].engine, BatchingEngine)
        for seed, events in zip((1, 2, 3), streams):
            expected = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, budget=30, seed=seed).to_dict()
            got = collect(events)
            for got_level, want_level in zip(got["levels"], expected["levels"], strict=True):
                assert [f["value"] for f in got_level["features"]] == pytest.approx(
                    [f["value"] for f in want_level["features"]], rel=1e-4, abs=1e-4
                )
            assert got["stats"]["evaluations"] == expected["stats"]["evaluations"]
        # Three run at once, one more (queue_size=1) may wait, the next is refused.
        running = [stub.Explain(slow_request()) for _ in range(3)]
        for call in running:
            next(call)
        waiting = stub.Explain(slow_request())
        waiting.initial_metadata()
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.Explain(quick_request(), timeout=30))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        for call in [*running, waiting]:
            call.cancel()
        wait_until(lambda: server.running.service.worker.pending == 0, 10)
        assert [e.WhichOneof("event") for e in stub.Explain(quick_request(), timeout=30)][-1] == "done"


def test_the_batcher_refuses_empty_continuations(tiny_explainer):
    batcher = BatchingEngine(tiny_explainer.engine)
    try:
        with pytest.raises(ValueError, match="continuation"):
            Explainer(batcher).model_view().continuation_logprobs(["x"], [[]])
    finally:
        batcher.close()


def test_scale_options_are_checked():
    from longshap.server.app import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(["--concurrency", "4", "--no-batching"]))
    assert (config.concurrency, config.batching) == (4, False)
    with pytest.raises(ValueError, match="needs --ray"):
        config_from_args(build_parser().parse_args(["--address", "10.0.0.1:6379"]))
    for argv in (["--concurrency", "0"], ["--replicas", "0"]):  # argparse refuses them: one line, exit 2
        with pytest.raises(SystemExit) as exit_:
            build_parser().parse_args(argv)
        assert exit_.value.code == 2


def test_blended_requests_merge_only_with_their_own_plan_and_keep_their_values(tiny_explainer):
    blended = {"kv_mode": "blend", "blend_recompute": 0.3, "blend_tolerance": 1e6, "budget": 20}
    requests = [{**REQUESTS[0], **blended, "target": "Paris"}, {**REQUESTS[2], **blended}, {**REQUESTS[0], "target": "Paris"}]
    alone = [tiny_explainer.explain(**request) for request in requests]
    batcher = BatchingEngine(tiny_explainer.engine, window_s=0.05)
    start = threading.Barrier(len(requests))

    def run(request):
        start.wait()
        return Explainer(batcher).explain(**request)

    try:
        with ThreadPoolExecutor(len(requests)) as pool:
            together = list(pool.map(run, requests))
    finally:
        batcher.close()
    for one, merged in zip(alone, together, strict=True):
        np.testing.assert_allclose([v for _, v, _ in _values(merged)], [v for _, v, _ in _values(one)], atol=1e-5)
        # Values agree to 1e-5 between batch orders in float32; the check's differences are such value
        # differences over the total effect, so they agree to about that, not to rounding.
        assert merged.self_check == (None if one.self_check is None else pytest.approx(one.self_check, abs=1e-4))
    assert together[0].stats["blended_rows"] > 0 and together[2].stats["blended_rows"] == 0
