"""The openai engine against a real server (llama-cpp-python's, on 127.0.0.1): values, tokenisation, errors, retries, keys."""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import numpy as np
import pytest
from longshap.hierarchy.engines import RunContext
from longshap.hierarchy.errors import Cancelled

pytest.importorskip("llama_cpp", reason="the llamacpp extra is not installed (pip install 'longshap[llamacpp]')")

DOCUMENTS = [
    {"title": "Paris", "text": "Paris is the capital of France. It is on the Seine."},
    {"title": "Berlin", "text": "Berlin is the capital of Germany. Dr. Smith lives in the U.S. now."},
    {"title": "Fox", "text": "The quick brown fox jumps over the lazy dog 1998."},
]


def test_explanations_equal_the_in_process_llamacpp_engines(openai_engine, llamacpp_engine):
    from longshap.hierarchy import Explainer

    options = dict(question="What is the capital of France?", documents=DOCUMENTS, target="Paris", budget=12, seed=0)
    remote = Explainer(openai_engine).explain(**options)
    local = Explainer(llamacpp_engine).explain(**options)
    assert [level.level for level in remote.levels] == [level.level for level in local.levels]
    for remote_level, local_level in zip(remote.levels, local.levels):
        assert [f.id for f in remote_level.features] == [f.id for f in local_level.features]
        np.testing.assert_allclose([f.value for f in remote_level.features], [f.value for f in local_level.features], atol=1e-3)
    assert remote.stats["coalitions"] == local.stats["coalitions"]


def test_a_local_tokenizer_gives_the_servers_tokens(llama_server, openai_engine, tiny_llama_dir):
    from longshap.hierarchy.engines.openai_engine import OpenAIEngine

    local = OpenAIEngine(llama_server, tokenizer=str(tiny_llama_dir))
    try:
        text = "Question: Cafe, 1998?\nAnswer:"
        assert local.encode(text) == openai_engine.encode(text)
        assert local.encode_offsets(text) == openai_engine.encode_offsets(text) == llamacpp_offsets(tiny_llama_dir, text)
        # Byte tokens inside a UTF-8 character have no text a server can send: they get the bytes between their neighbours.
        accented = "Café déjà vu"
        assert openai_engine.encode_offsets(accented) == local.encode_offsets(accented)
        rows = [(openai_engine.encode(text), [[5], [7, 9]])]
        np.testing.assert_allclose(local.score(rows, RunContext()), openai_engine.score(rows, RunContext()), atol=1e-6)
    finally:
        local.close()


def llamacpp_offsets(model_dir, text):
    from longshap.hierarchy import Explainer

    return Explainer.from_pretrained(str(model_dir), engine="transformers").engine.encode_offsets(text)


def test_a_server_without_prompt_logprobs_is_refused_at_start(tiny_gguf, tmp_path):
    from bench.llama_server import start_llama_server
    from longshap.hierarchy.engines.openai_engine import OpenAIEngine
    from longshap.hierarchy.engines.openai_http import ServerError

    with start_llama_server(tiny_gguf, tmp_path, "--logits_all", "false") as (url, _):
        with pytest.raises(ServerError, match="no prompt log-probabilities.*--logits_all true"):
            OpenAIEngine(url)


def test_no_server_and_a_server_of_several_models_are_clear_errors(tmp_path):
    from longshap.hierarchy.engines.openai_engine import OpenAIEngine
    from longshap.hierarchy.engines.openai_http import ServerError

    with pytest.raises(ServerError, match="Connection refused|connect"):
        OpenAIEngine("http://127.0.0.1:9/v1", remote_model="m", retries=0)
    with fake_server(lambda handler: handler.reply(200, {"data": [{"id": "a"}, {"id": "b"}]})) as url:
        with pytest.raises(ValueError, match="serves 2 models .*--remote-model"):
            OpenAIEngine(url)


def test_a_stopped_run_sends_nothing(openai_engine):
    rows = [(openai_engine.encode("Question: What?\nAnswer:"), [[5]])] * 8
    with pytest.raises(Cancelled):
        openai_engine.score(rows, RunContext(should_stop=lambda: True))


# ---- the HTTP client, against a small real server whose answers the test sets -----------------


class _Handler(BaseHTTPRequestHandler):
    respond = staticmethod(lambda handler: handler.reply(200, {}))
    seen: list = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = json.loads(self.rfile.read(length) or b"null")
        type(self).seen.append((self.path, dict(self.headers), self.body))
        type(self).respond(self)

    do_GET = do_POST  # noqa: N815

    def reply(self, status: int, payload: object, headers: dict | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *_) -> None:
        pass


class fake_server:
    """A ThreadingHTTPServer on 127.0.0.1 answering with `respond(handler)`; yields its /v1 URL."""

    def __init__(self, respond) -> None:
        self.handler = type("Handler", (_Handler,), {"respond": staticmethod(respond), "seen": []})

    def __enter__(self) -> str:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *_) -> None:
        self.server.shutdown()
        self.server.server_close()


def answers(*replies) -> Iterator:
    return iter(replies)


def test_busy_answers_are_retried_with_backoff_and_the_key_is_sent(tmp_path):
    from longshap.hierarchy.engines.openai_http import JsonClient

    replies = answers((503, {"error": "loading"}, {}), (429, {"error": "slow down"}, {"Retry-After": "0.2"}), (200, {"ok": 1}, {}))

    def respond(handler):
        status, payload, headers = next(replies)
        handler.reply(status, payload, headers)

    server = fake_server(respond)
    with server as url:
        client = JsonClient(url.removesuffix("/v1"), api_key="sekret", backoff_s=0.05)
        started = time.monotonic()
        assert client.post("/v1/completions", {"prompt": "x"}) == {"ok": 1}
        assert time.monotonic() - started >= 0.2, "Retry-After is honoured"
    seen = server.handler.seen
    assert [path for path, _, _ in seen] == ["/v1/completions"] * 3
    assert all(headers.get("Authorization") == "Bearer sekret" and body == {"prompt": "x"} for _, headers, body in seen)


def test_client_errors_are_not_retried_and_name_the_servers_message():
    from longshap.hierarchy.engines.openai_http import JsonClient, ServerError

    calls = []

    def respond(handler):
        calls.append(handler.headers.get("Authorization"))
        handler.reply(401, {"error": {"message": "invalid api key"}})

    with fake_server(respond) as url:
        with pytest.raises(ServerError, match="HTTP 401: invalid api key"):
            JsonClient(url, api_key="wrong").post("/v1/completions", {})
    assert calls == ["Bearer wrong"]


def test_retries_stop_at_the_runs_deadline():
    from longshap.hierarchy.engines.openai_http import JsonClient

    with fake_server(lambda handler: handler.reply(503, {"error": "busy"})) as url:
        client = JsonClient(url, retries=50, backoff_s=0.2)
        started = time.monotonic()
        with pytest.raises(Cancelled):
            client.post("/v1/completions", {}, RunContext(deadline=time.monotonic() + 0.5))
        assert time.monotonic() - started < 2.0


def test_a_request_left_unanswered_is_not_sent_again():
    from longshap.hierarchy.engines.openai_http import JsonClient, ServerError

    def respond(handler):
        time.sleep(0.6)
        handler.reply(200, {"late": True})

    server = fake_server(respond)
    with server as url:
        with pytest.raises(ServerError, match="no answer within 0.2 s"):
            JsonClient(url, timeout_s=0.2, retries=3).post("/v1/completions", {})
        time.sleep(0.5)
    assert len(server.handler.seen) == 1
