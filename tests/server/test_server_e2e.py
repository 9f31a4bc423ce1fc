"""End to end over a real server on 127.0.0.1: streamed events, final values equal to the in-process engine's."""
from __future__ import annotations

import math

import grpc
import pytest

from longshap.proto.wire import collect, pb, pb_grpc
from serving import DOCUMENTS, LIMITS, QUESTION, qa_request, quick_request
from longshap.server.app import ServerConfig, ServerThread


def _kinds(events) -> list[str]:
    return [event.WhichOneof("event") for event in events]


def _assert_order(kinds: list[str]) -> None:
    """answer, then per level: level_start, progress..., level; then done."""
    assert kinds[0] == "answer" and kinds[-1] == "done"
    state = "between"
    for kind in kinds[1:-1]:
        if state == "between":
            assert kind == "level_start"
            state = "inside"
        else:
            assert kind in ("progress", "level")
            state = "between" if kind == "level" else "inside"
    assert state == "between"


def _without_times(explanation: dict) -> dict:
    explanation = dict(explanation, stats={k: v for k, v in explanation["stats"].items() if k != "wall_seconds"})
    explanation["levels"] = [dict(level, wall_seconds=None) for level in explanation["levels"]]
    return explanation


def test_qa_events_stream_in_order_and_equal_the_engine(stub, tiny_explainer):
    events = list(stub.Explain(qa_request(budget=40, seed=3)))
    kinds = _kinds(events)
    _assert_order(kinds)
    assert [e.level_start.level for e in events if e.HasField("level_start")] == ["document", "sentence", "word"]
    assert "progress" in kinds
    start = next(e.level_start for e in events if e.HasField("level_start"))
    assert [f.title for f in start.features] == ["Paris", "Berlin"]
    expected = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, budget=40, seed=3).to_dict()
    got = collect(events)
    assert got["answer"] == expected["answer"]
    for got_level, want_level in zip(got["levels"], expected["levels"], strict=True):
        assert [f["id"] for f in got_level["features"]] == [f["id"] for f in want_level["features"]]
        assert [f["value"] for f in got_level["features"]] == pytest.approx([f["value"] for f in want_level["features"]], rel=1e-9, abs=1e-12)
        got_stderr, want_stderr = ([math.inf if f["stderr"] is None else f["stderr"] for f in lvl["features"]] for lvl in (got_level, want_level))
        assert got_stderr == pytest.approx(want_stderr, rel=1e-9, abs=1e-12)  # null: an error the samples cannot bound
        assert [f["expanded"] for f in got_level["features"]] == [f["expanded"] for f in want_level["features"]]
    assert _without_times(got) == _without_times(expected)
    level_events = [e.level.level for e in events if e.HasField("level")]
    assert [list(level.expanded) for level in level_events] == [[f["id"] for f in lvl["features"] if f["expanded"]] for lvl in expected["levels"]]
    done = events[-1].done
    assert done.summary.evaluations == expected["stats"]["evaluations"] and done.summary.forward_tokens > 0 and done.request_id


def test_a_blended_request_reports_its_self_check_on_the_wire(stub, tiny_explainer):
    options = {"budget": 16, "seed": 2, "target": "Paris", "kv_mode": "blend", "blend_recompute": 0.5, "blend_checks": 3, "blend_tolerance": 50.0}
    events = list(stub.Explain(qa_request(**options)))
    expected = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, **options).to_dict()
    got = collect(events)
    assert _without_times(got) == _without_times(expected)
    check = events[-1].done.self_check
    assert check.coalitions == 4 and not check.fallback  # two documents: all, none and both single-document coalitions and check.recompute == 0.5 and check.tolerance == 50.0
    assert check.max_difference == pytest.approx(expected["self_check"]["max_difference"], rel=1e-12)
    plain = list(stub.Explain(qa_request(budget=8, seed=2, target="Paris")))
    assert not plain[-1].done.HasField("self_check") and collect(plain)["self_check"] is None


def test_classification_streams_label_probabilities(stub, tiny_explainer):
    events = list(stub.Explain(quick_request()))
    _assert_order(_kinds(events))
    expected = tiny_explainer.explain(text="a charming journey", labels=["negative", "positive"], budget=10)
    assert dict(events[0].answer.label_probabilities) == pytest.approx(expected.label_probabilities)
    assert _without_times(collect(events)) == _without_times(expected.to_dict())


def test_rerank_orders_answers_by_total_effect_and_documents_by_value(stub, tiny_explainer):
    candidates = ["Paris", "Berlin", "the Seine"]
    request = pb.RerankRequest(prompt=qa_request().qa, candidates=candidates, budget=8, seed=1)
    response = stub.Rerank(request)
    effects = {
        c: tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, target=c, levels=["document"], value="logprob", budget=8, seed=1)
        for c in candidates
    }
    assert [a.answer for a in response.answers] == sorted(candidates, key=lambda c: -effects[c].total_effect)
    assert [a.total_effect for a in response.answers] == pytest.approx([effects[a.answer].total_effect for a in response.answers])
    best = effects[response.answers[0].answer].level("document").features
    assert [d.index for d in response.documents] == [f.doc for f in sorted(best, key=lambda f: -f.value)]
    assert response.summary.evaluations > 0


def test_list_models_reports_models_and_limits(stub):
    response = stub.ListModels(pb.ListModelsRequest())
    assert [(m.name, m.is_default, m.architecture) for m in response.models] == [("tiny", True, "llama")]
    assert response.limits == LIMITS.to_proto()


def test_a_second_model_is_served_by_name(tiny_llama_dir, tiny_gemma_dir):
    from longshap.hierarchy import Explainer

    explainers = {"llama": Explainer.from_pretrained(str(tiny_llama_dir)), "gemma": Explainer.from_pretrained(str(tiny_gemma_dir))}
    with ServerThread(ServerConfig(port=0), explainers) as server, grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        by_model = {}
        for name in explainers:
            request = quick_request()
            request.model = name
            by_model[name] = collect(stub.Explain(request))
        default = collect(stub.Explain(quick_request()))
    assert default["full_value"] == by_model["llama"]["full_value"] != by_model["gemma"]["full_value"]


@pytest.mark.slow
def test_default_model_document_level_equals_the_engine(default_explainer):
    """The real embedded model, kept cheap: document level only, 3 passages, budget 6."""
    from longshap.client.data import load_nq, nq_prompt

    prompt = nq_prompt(load_nq(), 5, 2, seed=0)
    arguments = dict(question=prompt.question, documents=prompt.documents, levels=["document"], budget=6, seed=0, target=prompt.answers[0])
    with ServerThread(ServerConfig(port=0), {"gemma-3-270m": default_explainer}) as server, grpc.insecure_channel(server.address) as channel:
        request = pb.ExplainRequest(
            qa=pb.QAPrompt(question=prompt.question, documents=[pb.Document(**d) for d in prompt.documents]),
            levels=["document"], budget=6, seed=0, target=prompt.answers[0],
        )
        events = list(pb_grpc.ExplainerStub(channel).Explain(request))
    _assert_order(_kinds(events))
    expected = default_explainer.explain(**arguments).to_dict()
    assert _without_times(collect(events)) == _without_times(expected)


def test_a_model_failure_is_internal_with_the_request_id_not_blamed_on_the_user(tiny_llama_dir, monkeypatch):
    """A ValueError from the model side (e.g. NaN scores) is the server's fault: INTERNAL, never INVALID_ARGUMENT."""
    from longshap.hierarchy import Explainer

    explainer = Explainer.from_pretrained(str(tiny_llama_dir))

    def broken(rows, context):
        raise ValueError("scores are NaN")

    monkeypatch.setattr(explainer.engine, "score", broken)
    monkeypatch.setattr(explainer.engine, "score_tokens", broken)
    with ServerThread(ServerConfig(port=0), {"tiny": explainer}) as server, grpc.insecure_channel(server.address) as channel:
        call = pb_grpc.ExplainerStub(channel).Explain(quick_request())
        with pytest.raises(grpc.RpcError) as failure:
            list(call)
        request_id = dict(call.initial_metadata())["x-request-id"]
    assert failure.value.code() == grpc.StatusCode.INTERNAL
    assert request_id in failure.value.details() and "scores are NaN" in failure.value.details()


def test_an_engine_request_error_found_while_running_is_invalid_argument(tiny_llama_dir, monkeypatch):
    """Some request faults show only with the model (an empty greedy answer): those stay INVALID_ARGUMENT."""
    from longshap.hierarchy import Explainer

    explainer = Explainer.from_pretrained(str(tiny_llama_dir))
    monkeypatch.setattr(explainer.engine, "decode", lambda tokens: "")
    with ServerThread(ServerConfig(port=0), {"tiny": explainer}) as server, grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as failure:
            list(pb_grpc.ExplainerStub(channel).Explain(qa_request(budget=4)))
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.value.details().startswith("target: ")
