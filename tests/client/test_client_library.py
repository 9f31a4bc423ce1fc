"""The Python client library and the live view."""
from __future__ import annotations

import io

from longshap.client.api import LongShapClient
from longshap.client.render import LiveView, progress_bar, terminal_level
from longshap.hierarchy.results import LevelEvent
from longshap.proto.wire import collect, event_to_proto
from serving import DOCUMENTS, QUESTION, wait_until


def test_explain_yields_events_and_collects_to_the_engine_json(tiny_server, tiny_explainer):
    with LongShapClient(tiny_server.address, timeout=60) as client:
        events = list(client.explain(question=QUESTION, documents=DOCUMENTS, budget=12, thresholds=0.0, levels=["document", "sentence"]))
    expected = tiny_explainer.explain(question=QUESTION, documents=DOCUMENTS, budget=12, thresholds=0.0, levels=["document", "sentence"])
    got = collect(events)
    assert [f["value"] for f in got["levels"][-1]["features"]] == [f.value for f in expected.levels[-1].features]
    assert [e.WhichOneof("event") for e in events][0] == "answer"


def test_leaving_the_stream_early_cancels_the_work(tiny_server):
    with LongShapClient(tiny_server.address) as client:
        for event in client.explain(text=" ".join(["good film"] * 30), labels=["negative", "positive"], budget=10**6):
            if event.HasField("level_start"):
                break
    assert wait_until(lambda: tiny_server.running.service.worker.pending == 0, 5) < 1.5


def test_live_view_draws_a_progress_bar_and_prints_levels(tiny_explainer):
    out, err = io.StringIO(), io.StringIO()
    view = LiveView(out, err, colour=False, show_levels=True, show_progress=True)
    for event in tiny_explainer.explain_stream(question=QUESTION, documents=DOCUMENTS, budget=12, on_progress=lambda p: view.handle(event_to_proto(p))):
        view.handle(event_to_proto(event))
    assert "document [" in err.getvalue() and "evaluations" in err.getvalue()
    assert out.getvalue().index("== document level") < out.getvalue().index("== sentence level")
    assert view.explanation["answer"] and view.first_level_at is not None


def test_progress_bar_fills_with_evaluations():
    assert progress_bar("word", 0, 10, width=10) == "     word [..........] 0/10 evaluations"
    assert progress_bar("word", 5, 10, width=10) == "     word [#####.....] 5/10 evaluations"
    assert progress_bar("word", 12, 10, width=10).count("#") == 10


def test_a_level_shows_the_units_adaptive_sampling_left_unsettled(tiny_explainer):
    level = tiny_explainer.explain(text="a charming and often affecting journey", labels=["negative", "positive"], budget=30,
                                   adaptive=True, confidence=0.999999).levels[0]
    wire = event_to_proto(LevelEvent(level)).level.level
    assert level.unsettled and list(wire.unsettled) == level.unsettled
    assert f"not settled within the budget (rank or expansion): {', '.join(level.unsettled)}" in terminal_level(wire, colour=False)
