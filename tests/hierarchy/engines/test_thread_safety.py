"""One explainer shared by threads: each request gets exactly the values and the costs it gets alone.

With the old scorer a request's stop flag, statistics and prefix states lived on the
shared model object, so concurrent requests read each other's counts (and could stop
each other); now each request carries its own run context.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest

from longshap.hierarchy import Explainer
from longshap.hierarchy.engines import EngineStats
from longshap.hierarchy.errors import Cancelled

PARIS = {"title": "Paris", "text": "Paris is the capital of France. It is on the Seine. Dr. Smith lives there."}
BERLIN = {"title": "Berlin", "text": "Berlin is the capital of Germany. It has many museums."}
FOX = {"title": "Fox", "text": "The quick brown fox jumps over the lazy dog. The dog sleeps."}
REQUESTS = [
    dict(question="What is the capital of France?", documents=[PARIS, BERLIN, FOX], target="Paris", budget=24, seed=1),
    dict(question="What is the capital of Germany?", documents=[BERLIN, FOX], target="Berlin", value="probability", budget=20, seed=2),
    dict(question="Who lives in Paris?", documents=[FOX, PARIS], value="answers", max_new_tokens=3, budget=16, seed=3),
    dict(text="a charming and often affecting journey , unflinchingly bleak", labels=["negative", "positive"], budget=24, seed=4),
]
COMPARED_STATS = EngineStats.names()


@pytest.fixture(scope="module")
def explainer(tiny_llama_dir):
    # Small batches: each request makes many model calls, so the threads' calls interleave.
    return Explainer.from_pretrained(str(tiny_llama_dir), engine_options={"max_batch_size": 4})


def explain(explainer: Explainer, request: dict, **options):
    levels = ("document", "sentence") if "documents" in request else ("word",)
    return explainer.explain(**request, levels=levels, thresholds=0.0, **options)


def values(result) -> list[float]:
    return [f.value for level in result.levels for f in level.features]


def test_threads_sharing_an_explainer_get_their_single_thread_values_and_stats(explainer):
    alone = [explain(explainer, request) for request in REQUESTS]
    assert len({tuple(values(r)) for r in alone}) == len(REQUESTS)  # four different explanations
    results: list = [None] * len(REQUESTS)
    errors: list[BaseException] = []
    start = threading.Barrier(len(REQUESTS))

    def run(index: int) -> None:
        try:
            start.wait()
            results[index] = explain(explainer, REQUESTS[index])
        except BaseException as error:  # noqa: BLE001  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(REQUESTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors, errors
    for request, single, shared in zip(REQUESTS, alone, results):
        assert shared is not None
        assert shared.answer == single.answer
        assert [[f.id for f in level.features] for level in shared.levels] == [[f.id for f in level.features] for level in single.levels]
        np.testing.assert_allclose(values(shared), values(single), atol=1e-5, err_msg=str(request))
        for name in COMPARED_STATS:
            assert shared.stats[name] == single.stats[name], (name, request)
        assert [level.evaluations for level in shared.levels] == [level.evaluations for level in single.levels]
        assert [(level.forward_tokens, level.reused_tokens) for level in shared.levels] == [
            (level.forward_tokens, level.reused_tokens) for level in single.levels
        ]


def test_cancelling_one_request_leaves_the_others_alone(explainer):
    """A stop flag belongs to its request: the others, running beside it, finish with their single-thread values and costs."""
    alone = [explain(explainer, request) for request in REQUESTS[:2]]
    polls = [0]

    def stop_after_some_work() -> bool:
        polls[0] += 1
        return polls[0] > 100

    outcomes: dict[int, object] = {}
    start = threading.Barrier(3)

    def run(index: int, request: dict, **options) -> None:
        start.wait()
        try:
            outcomes[index] = explain(explainer, request, **options)
        except Cancelled as error:
            outcomes[index] = error

    threads = [
        threading.Thread(target=run, args=(0, REQUESTS[0])),
        threading.Thread(target=run, args=(1, REQUESTS[1])),
        threading.Thread(target=run, args=(2, dict(REQUESTS[3], budget=10**4)), kwargs={"should_stop": stop_after_some_work}),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert isinstance(outcomes[2], Cancelled)
    for index, single in enumerate(alone):
        result = outcomes[index]
        assert not isinstance(result, Cancelled)
        np.testing.assert_allclose(values(result), values(single), atol=1e-5)
        assert {name: result.stats[name] for name in COMPARED_STATS} == {name: single.stats[name] for name in COMPARED_STATS}
