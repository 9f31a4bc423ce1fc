"""Ray replicas on a real local cluster bound to 127.0.0.1: same values, shared replicas, cancellation, replaced replicas."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from longshap.hierarchy.errors import Cancelled
from longshap.proto.wire import collect, pb_grpc
from longshap.server.app import ServerConfig, ServerThread
from longshap.hierarchy import Explainer
from serving import DOCUMENTS, LIMITS, QUESTION, qa_request, slow_request, wait_until

ray = pytest.importorskip("ray")
from longshap.server.ray_backend import Replica  # noqa: E402  (needs ray)

REQUEST = {"question": QUESTION, "documents": DOCUMENTS, "budget": 60, "seed": 5}


@pytest.fixture
def backend(ray_engine):
    return ray_engine


def _on(backend, explainer):
    return Explainer(backend)


def _values(explanation) -> list[float]:
    return [f.value for level in explanation.levels for f in level.features]


def test_ray_cluster_is_on_localhost_only(backend):
    nodes = ray.nodes()
    assert nodes and all(node["NodeManagerAddress"] == "127.0.0.1" for node in nodes)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")


def test_server_on_replicas_equals_the_local_engine(backend, tiny_llama_dir, tiny_explainer):
    from longshap.hierarchy import Explainer

    done_before = list(backend.chunks_done)
    server = ServerThread(
        ServerConfig(port=0, limits=LIMITS, concurrency=2),
        {"tiny": Explainer.from_pretrained(str(tiny_llama_dir), weights=False)},  # as `longshap serve --ray`: the replicas hold the weights
        {"tiny": backend},
    )
    with server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        with ThreadPoolExecutor(2) as pool:
            streams = list(pool.map(lambda seed: list(stub.Explain(qa_request(budget=30, seed=seed), timeout=120)), (1, 2)))
        for seed, events in zip((1, 2), streams):
            expected = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, budget=30, seed=seed).to_dict()
            got = collect(events)
            assert got["answer"] == expected["answer"]
            for got_level, want_level in zip(got["levels"], expected["levels"], strict=True):
                assert [f["id"] for f in got_level["features"]] == [f["id"] for f in want_level["features"]]
                assert [f["value"] for f in got_level["features"]] == pytest.approx(
                    [f["value"] for f in want_level["features"]], rel=1e-4, abs=1e-4
                )
            assert got["stats"]["evaluations"] == expected["stats"]["evaluations"]
    assert all(after > before for after, before in zip(backend.chunks_done, done_before)), "both replicas did work"


def test_cancellation_reaches_the_replicas(backend, tiny_explainer):
    stop = threading.Event()
    explainer = _on(backend, tiny_explainer)
    arguments = {"text": slow_request().classification.text, "labels": ["negative", "positive"], "budget": 10**6}
    stopped_before = sum(ray.get([replica.stopped_calls.remote() for replica in backend.replicas]))
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: explainer.explain(**arguments, should_stop=stop.is_set))
        wait_until(lambda: sum(backend.chunks_done) > 0 and any(backend._busy), 60)
        stop.set()
        with pytest.raises(Cancelled):
            running.result(timeout=5)
    assert sum(ray.get([replica.stopped_calls.remote() for replica in backend.replicas])) > stopped_before
    started = time.monotonic()
    _on(backend, tiny_explainer).explain(text="a charming journey", labels=["negative", "positive"], budget=10)
    assert time.monotonic() - started < 10, "the replicas were freed"


def test_a_killed_replica_is_replaced_and_nothing_is_lost_or_counted_twice(backend, tiny_explainer):
    reference = _on(backend, tiny_explainer).explain(**REQUEST)
    replaced, retried = backend.replicas, backend.retried
    replaced_before = backend.replaced
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: _on(backend, tiny_explainer).explain(**REQUEST))
        done_at_start = sum(backend.chunks_done)
        wait_until(lambda: sum(backend.chunks_done) >= done_at_start + 2, 60)
        assert not running.done(), "the request must still be running when its replica is killed"
        ray.kill(replaced[0])
        result = running.result(timeout=120)
    assert backend.replaced == replaced_before + 1 and backend.retried > retried
    # Chunks are re-cut after the kill and replicas keep their prefix caches, so passes differ in
    # shape: float32 noise (~1e-7), not lost or doubled rows, which would move values by ~1e-2.
    np.testing.assert_allclose(_values(result), _values(reference), rtol=0, atol=1e-5)
    # A replacement replica starts with a cold prefix cache, so how the tokens split between forwarded
    # and reused (and the passes they took) may differ; what was counted may not: every row once.
    cache_dependent = ("wall_seconds", "forward_tokens", "reused_tokens", "cached_tokens", "forward_passes")
    assert {k: v for k, v in result.stats.items() if k not in cache_dependent} == {
        k: v for k, v in reference.stats.items() if k not in cache_dependent
    }
    tokens = [r.stats["forward_tokens"] + r.stats["reused_tokens"] for r in (result, reference)]
    assert tokens[0] == tokens[1]


def test_a_replica_loads_its_model_with_the_serve_flags(tiny_llama_dir):
    """`longshap serve --ray --dtype ...` hands its load options to every replica (here built in-process, outside Ray)."""
    import torch

    replica = Replica(str(tiny_llama_dir), {"max_batch_tokens": 256}, threads=1, load_options={"dtype": "bfloat16", "attn_implementation": "eager"})
    assert {p.dtype for p in replica.engine.model.parameters()} == {torch.bfloat16}
    assert replica.engine.model.config._attn_implementation == "eager"
    assert replica.engine.max_batch_tokens == 256


def test_gradient_methods_run_on_a_replica_with_in_process_values(backend, tiny_explainer):
    request = {"question": QUESTION, "documents": DOCUMENTS, "target": "Paris", "method": "integrated_gradients", "budget": 8}
    local = tiny_explainer.explain(**request)
    remote = Explainer(backend).explain(**request)
    np.testing.assert_allclose(_values(remote), _values(local), rtol=0, atol=1e-6)
    assert remote.stats["gradient_rows"] == local.stats["gradient_rows"]
    # Replicas keep prefix states across calls, so tokens split differently between forwarded and reused; none is lost.
    assert remote.stats["forward_tokens"] + remote.stats["reused_tokens"] == local.stats["forward_tokens"] + local.stats["reused_tokens"]


def test_replicas_run_the_engine_the_front_was_loaded_with(ray_engine, tiny_gguf, llamacpp_engine):
    """A llama.cpp front gets llama.cpp replicas (`--engine llamacpp --ray`): the same values, no gradients claimed."""
    from longshap.hierarchy.engines import GRADIENTS, RunContext
    from longshap.server.ray_backend import RayEngine

    front = Explainer.from_pretrained(str(tiny_gguf), weights=False).engine
    replicas = RayEngine(front, str(tiny_gguf), replicas=1, load_options={"engine": "auto"})
    try:
        rows = [(front.encode(QUESTION), [[5], [7, 9]])]
        np.testing.assert_allclose(replicas.score(rows, RunContext()), llamacpp_engine.score(rows, RunContext()), atol=2e-4)
        assert GRADIENTS not in replicas.capabilities
    finally:
        replicas.close()
        front.close()


def test_blended_requests_run_on_replicas_with_in_process_values(backend, tiny_explainer):
    request = {**REQUEST, "budget": 20, "target": "Paris", "kv_mode": "blend", "blend_recompute": 0.3, "blend_tolerance": 1e6}
    local = tiny_explainer.explain(**request)
    remote = Explainer(backend).explain(**request)
    assert not remote.self_check["fallback"]
    assert remote.self_check["max_difference"] == pytest.approx(local.self_check["max_difference"], abs=1e-6)
    np.testing.assert_allclose(_values(remote), _values(local), rtol=0, atol=1e-5)
    assert remote.stats["blended_rows"] == local.stats["blended_rows"] > 0
