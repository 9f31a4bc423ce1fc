"""Issue 11: request text is never code, every field counts against the limits, wire-level garbage
is a plain INVALID_ARGUMENT, queued cancellations free their slot, and shutdown/ports/logs behave."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading

import grpc
import pytest

from longshap.proto.wire import pb, pb_grpc
from longshap.server.app import ServerConfig, ServerThread
from serving import DOCUMENTS, LIMITS, QUESTION, qa_request, quick_request, slow_request, wait_until
from test_server_ops import ROOT, self_signed_certificate

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _classification(instruction: str = "", labels=("negative", "positive"), **fields) -> pb.ExplainRequest:
    prompt = pb.ClassificationPrompt(instruction=instruction, text="a charming journey", labels=list(labels))
    return pb.ExplainRequest(classification=prompt, budget=10, **fields)


def _refusal(stub, request) -> grpc.RpcError:
    call = stub.Rerank if isinstance(request, pb.RerankRequest) else lambda r, timeout: list(stub.Explain(r, timeout=timeout))
    with pytest.raises(grpc.RpcError) as failure:
        call(request, timeout=30)
    return failure.value


# ---- 1: format-string injection ---------------------------------------------------------------------


@pytest.mark.parametrize("instruction", ["{labels.__class__.__mro__}", "{0}", "{x}", "{labels:x>20000}", "unbalanced {"])
def test_a_classification_instruction_with_stray_braces_is_refused_plainly(stub, instruction):
    error = _refusal(stub, _classification(instruction))
    assert error.code() == INVALID
    assert error.details().startswith("classification.instruction:") and "is not a placeholder" in error.details()
    assert "<class" not in error.details() and "Error" not in error.details()  # nothing of the server's objects leaks


def test_the_labels_placeholder_and_literal_braces_still_work(stub):
    events = list(stub.Explain(_classification("Answer {{in JSON}} with one of: {labels}."), timeout=30))
    assert events[-1].HasField("done")


# ---- 2: every text field counts, and the cost is bounded before work starts --------------------------

_DOCS = [pb.Document(**d) for d in DOCUMENTS]
_LONG = 2_001  # the default max_field_characters is 2,000
BAD_SIZES = {
    "QA target": (qa_request(target="x" * _LONG), "target:"),
    "QA placeholder": (qa_request(placeholder="_" * _LONG), "placeholder:"),
    "placeholder x units": (qa_request(placeholder="_" * 250), "qa: "),
    "classification placeholder": (_classification(placeholder="_" * 20_000), "placeholder:"),
    "1 MB placeholder": (_classification(placeholder="_" * 1_000_000), "placeholder:"),
    "a long label": (_classification(labels=("negative", "p" * _LONG)), "classification.labels[1]:"),
    "too many labels": (_classification(labels=[f"label {i}" for i in range(17)]), "classification.labels:"),
    "instruction expanding the labels": (_classification("{labels}" * 240, labels=("strongly negative", "strongly positive")), "classification:"),
    "document title": (pb.ExplainRequest(qa=pb.QAPrompt(question=QUESTION, documents=[pb.Document(title="t" * _LONG, text="Paris.")])), "qa.documents[0].title:"),
    "QA instruction": (pb.ExplainRequest(qa=pb.QAPrompt(question=QUESTION, documents=_DOCS, instruction="i" * _LONG)), "qa.instruction:"),
    "rerank candidate": (pb.RerankRequest(prompt=pb.QAPrompt(question=QUESTION, documents=_DOCS), candidates=["Paris", "c" * _LONG]), "candidates[1]:"),
}


@pytest.mark.parametrize("request_, field", BAD_SIZES.values(), ids=BAD_SIZES.keys())
def test_every_text_field_counts_against_the_limits(stub, tiny_server, request_, field):
    error = _refusal(stub, request_)
    assert error.code() == INVALID and error.details().startswith(field), error.details()
    assert tiny_server.running.service.worker.pending == 0  # refused before it was queued


def test_list_models_reports_the_new_limits(stub):
    limits = stub.ListModels(pb.ListModelsRequest(), timeout=5).limits
    assert (limits.max_labels, limits.max_field_characters) == (16, 2_000)


# ---- 3: a cancelled request still in the queue gives its slot back at once -----------------------------


def test_cancelling_a_queued_request_frees_its_slot_at_once(stub, tiny_server):
    worker = tiny_server.running.service.worker
    running = stub.Explain(slow_request())
    next(running)
    waiting = stub.Explain(slow_request())
    waiting.initial_metadata()
    assert worker.pending == 2
    waiting.cancel()
    assert wait_until(lambda: worker.pending == 1, 2) < 1  # not when the worker would have reached it
    accepted = stub.Explain(slow_request())
    accepted.initial_metadata()  # queued, not RESOURCE_EXHAUSTED
    assert worker.pending == 2
    accepted.cancel()
    running.cancel()


# ---- 6: wire-level garbage ---------------------------------------------------------------------------

GARBAGE = {
    "truncated": qa_request().SerializeToString()[:-7],
    "corrupt": b"\xff\xff\xff\xff\x0f",
    "invalid UTF-8": b"\x1a\x10\x12\x05\xff\xfe\x00\x41\x42\x1a\x04abcd\x1a\x00",
    "lone surrogate": b"\x1a\x0b\x12\x03\xed\xa0\x80\x1a\x04abcd",
}


CASES = [(method, data) for method in ("Explain", "Rerank") for data in GARBAGE.values()] + [("ListModels", GARBAGE["corrupt"])]
# (ListModelsRequest has no fields: any well-formed bytes are unknown fields it keeps, not an error.)


@pytest.mark.parametrize("method, data", CASES, ids=[f"{m}-{k}" for m in ("Explain", "Rerank") for k in GARBAGE] + ["ListModels-corrupt"])
def test_unreadable_requests_are_invalid_argument_with_a_plain_message(tiny_server, caplog, method, data):
    with grpc.insecure_channel(tiny_server.address) as channel:
        path = f"/longshap.v1.Explainer/{method}"
        call = channel.unary_stream(path) if method == "Explain" else channel.unary_unary(path)
        with caplog.at_level(logging.INFO), pytest.raises(grpc.RpcError) as failure:
            result = call(data, timeout=10)
            list(result) if method == "Explain" else result
    assert failure.value.code() == INVALID
    assert failure.value.details().startswith("request: not a valid longshap.v1.") and "Error" not in failure.value.details()
    assert not [r for r in caplog.records if r.exc_info], "an unreadable request must not log a traceback"


@pytest.mark.parametrize("request_", [qa_request(seed=-1), pb.RerankRequest(prompt=pb.QAPrompt(question=QUESTION, documents=_DOCS), candidates=["Paris"], seed=-3)])
def test_negative_seeds_are_refused_by_one_rule(stub, request_):
    error = _refusal(stub, request_)
    assert error.code() == INVALID and error.details().startswith("seed: must be a non-negative integer")


# ---- 4 and 9: shutdown -------------------------------------------------------------------------------


def test_shutdown_lets_running_and_queued_requests_finish_then_logs_no_traceback(tiny_explainer, caplog):
    server = ServerThread(ServerConfig(port=0, limits=LIMITS), {"tiny": tiny_explainer}).start()
    outcomes = []
    with grpc.insecure_channel(server.address) as channel:
        stub = pb_grpc.ExplainerStub(channel)
        calls = [stub.Explain(qa_request(budget=40), timeout=60), stub.Explain(quick_request(), timeout=60)]
        next(calls[0])
        calls[1].initial_metadata()
        with caplog.at_level(logging.INFO):
            stopper = threading.Thread(target=server.stop, args=(30,))
            stopper.start()
            outcomes = [[e.WhichOneof("event") for e in call][-1] for call in calls]
            stopper.join(30)
    assert outcomes == ["done", "done"] and not stopper.is_alive()


def test_calls_cut_at_the_end_of_the_grace_log_no_cancelled_error_traceback(tiny_explainer, caplog):
    server = ServerThread(ServerConfig(port=0, limits=LIMITS), {"tiny": tiny_explainer}).start()
    with grpc.insecure_channel(server.address) as channel, caplog.at_level(logging.INFO):
        call = pb_grpc.ExplainerStub(channel).Explain(slow_request())
        next(call)
        server.stop(0.3)
        with pytest.raises(grpc.RpcError):
            list(call)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert [r.fields["outcome"] for r in caplog.records if r.getMessage() == "request"] == ["CANCELLED"]


# ---- 4, 5, 8: `longshap serve` options and start-up failures -------------------------------------------


def _serve(*options: str, timeout: float = 60) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "longshap.client.cli", "serve", *options]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("longshap serve")]  # usage and JSON logs aside
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "options, message",
    [
        (["--grace", "nan"], "--grace: must be in"),
        (["--grace", "-5"], "--grace: must be in"),
        (["--port", "99999"], "--port: must be in 0..65535"),
        (["--port", "-1"], "--port: must be in 0..65535"),
        (["--threads", "0"], "--threads: must be in"),
        (["--max-characters", "3000000000"], "--max-characters: must be in"),
    ],
)
def test_serve_refuses_out_of_range_options(options, message):
    _one_line_error(_serve(*options), message)


def test_serve_refuses_garbage_tls_material(tmp_path):
    cert, key = self_signed_certificate()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "garbage.pem").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    for cert_file, key_file in (("garbage.pem", "key.pem"), ("cert.pem", "garbage.pem")):
        result = _serve("--tls-cert", str(tmp_path / cert_file), "--tls-key", str(tmp_path / key_file))
        _one_line_error(result, "not a PEM certificate chain with its private key")


def test_a_second_server_on_a_taken_port_fails_with_one_line(tiny_server, tiny_llama_dir):
    """gRPC's default SO_REUSEPORT would let it start and take half the traffic."""
    result = _serve("--model", f"tiny={tiny_llama_dir}", "--port", str(tiny_server.port), "--threads", "1")
    _one_line_error(result, f"cannot listen on 127.0.0.1:{tiny_server.port}")
    with socket.socket() as holder:  # a port held by some other program's socket
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        result = _serve("--model", f"tiny={tiny_llama_dir}", "--port", str(holder.getsockname()[1]), "--host", "256.256.256.256")
    _one_line_error(result, "cannot listen on 256.256.256.256:")


def test_default_threads_leave_room_for_others():
    from longshap.server.app import build_parser, default_threads

    assert 1 <= default_threads() <= 4
    assert build_parser().parse_args(["--threads", "2"]).threads == 2
