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
from longshap.server.batching import (
    Batcher,
    LocalBackend,
    RequestScorer,
    Work,
    split_stats,
)
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


class _Counting(LocalBackend):
    """A local backend that counts its calls."""

    def __init__(self, scorer) -> None:
        super().__init__(scorer)
        self.calls: list[int] = []

    def run(self, work, should_stop, caller=None):
        self.calls.append(len(work.rows))
        return super().run(work, should_stop, caller)


def _request_explainer(explainer, executor):
    import copy

    clone = copy.copy(explainer)
    clone.scorer = RequestScorer(explainer.scorer, executor)
    return clone


def test_concurrent_requests_share_passes_and_equal_single_requests(tiny_explainer):
    alone = [tiny_explainer.explain(**request) for request in REQUESTS]
    backend = _Counting(tiny_explainer.scorer)
    model_before = tiny_explainer.scorer.stats.as_dict()
    batcher = Batcher(backend, window_s=0.05)
    start = threading.Barrier(len(REQUESTS))

    def run(request):
        explainer = _request_explainer(tiny_explainer, batcher)
        start.wait()
        return explainer.explain(**request)

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
    model_after = tiny_explainer.scorer.stats.as_dict()
    for name in ("forward_tokens", "reused_tokens", "forward_passes", "decode_steps"):
        assert sum(merged.stats[name] for merged in together) == model_after[name] - model_before[name]
    assert all(merged.stats["forward_tokens"] > 0 for merged in together)


def test_shared_out_stats_add_up_exactly():
    shares = split_stats({"forward_tokens": 10, "forward_passes": 1, "reused_tokens": 0}, [1, 1, 1])
    assert [s["forward_tokens"] for s in shares] == [4, 3, 3]
    assert sum(s["forward_passes"] for s in shares) == 1
    assert split_stats({"forward_tokens": 7}, [0, 0]) == [{"forward_tokens": 4}, {"forward_tokens": 3}]


def test_a_cancelled_caller_returns_at_once_while_the_merged_call_goes_on(tiny_explainer):
    started, release = threading.Event(), threading.Event()

    class Blocking(LocalBackend):
        def run(self, work, should_stop, caller=None):
            started.set()
            release.wait(10)
            return super().run(work, should_stop, caller)

    batcher = Batcher(Blocking(tiny_explainer.scorer))
    stop = threading.Event()
    rows = [tiny_explainer.scorer.encode_prompt("a charming journey")]
    try:
        other = ThreadPoolExecutor(1).submit(batcher.run, Work("greedy", rows, 2), lambda: False)
        started.wait(10)
        failed = ThreadPoolExecutor(1).submit(batcher.run, Work("greedy", rows, 2), stop.is_set)
        stop.set()
        with pytest.raises(Cancelled):
            failed.result(timeout=2)
        release.set()
        results, stats = other.result(timeout=30)
        assert len(results) == 1 and stats["forward_passes"] >= 1
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
        assert isinstance(server.running.service.executors["tiny"], Batcher)
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


def test_request_explainer_refuses_empty_continuations(tiny_explainer):
    scorer = RequestScorer(tiny_explainer.scorer, LocalBackend(tiny_explainer.scorer))
    with pytest.raises(ValueError, match="continuation"):
        scorer.continuation_logprobs(["x"], [[]])


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
