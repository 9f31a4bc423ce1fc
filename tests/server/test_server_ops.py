"""Health, reflection, bearer auth, TLS, graceful shutdown and `longshap serve` itself."""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from longshap.client.api import LongShapClient, LongShapError
from longshap.proto.wire import SERVICE_NAME, pb_grpc
from longshap.server.app import ServerConfig, ServerThread
from longshap.server.config import parse_model_spec
from serving import LIMITS, qa_request, quick_request, slow_request, wait_until

TOKEN = "s3cret-token"
ROOT = Path(__file__).resolve().parents[2]


def self_signed_certificate() -> tuple[bytes, bytes]:
    """(certificate, key) in PEM for localhost and 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


@pytest.fixture(scope="module")
def certificate() -> tuple[bytes, bytes]:
    return self_signed_certificate()


@pytest.fixture(scope="module")
def secure_server(tiny_explainer, certificate):
    """TLS and a bearer token."""
    cert, key = certificate
    with ServerThread(ServerConfig(port=0, token=TOKEN, tls_cert=cert, tls_key=key), {"tiny": tiny_explainer}) as server:
        yield server


@pytest.fixture(scope="module")
def token_server(tiny_explainer):
    """A bearer token over plaintext."""
    with ServerThread(ServerConfig(port=0, token=TOKEN), {"tiny": tiny_explainer}) as server:
        yield server


def test_health_reports_serving_for_the_server_and_the_service(tiny_server):
    with LongShapClient(tiny_server.address) as client:
        assert client.health("") == "SERVING"
        assert client.health() == "SERVING"
        with pytest.raises(LongShapError) as failure:
            client.health("no.such.Service")
    assert failure.value.code == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(tiny_server):
    with grpc.insecure_channel(tiny_server.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        assert {SERVICE_NAME, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
        methods = {m.name for m in database.FindFileContainingSymbol(SERVICE_NAME).service[0].method}
    assert methods == {"Explain", "Rerank", "ListModels"}


def test_without_auth_no_token_is_needed(tiny_server):
    with LongShapClient(tiny_server.address) as client:
        assert client.list_models().models[0].name == "tiny"


@pytest.mark.parametrize("token", [None, "wrong", TOKEN + "x"])
def test_auth_refuses_missing_or_wrong_tokens_on_unary_and_streaming_calls(token_server, token):
    with LongShapClient(token_server.address, token=token) as client:
        for call in (client.list_models, lambda: list(client.explain_events(quick_request()))):
            with pytest.raises(LongShapError) as failure:
                call()
            assert failure.value.code == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in failure.value.details


def test_auth_accepts_the_token_and_leaves_health_and_reflection_open(token_server):
    with LongShapClient(token_server.address, token=TOKEN) as client:
        assert client.list_models().models[0].name == "tiny"
        assert [e.WhichOneof("event") for e in client.explain_events(quick_request())][-1] == "done"
    with LongShapClient(token_server.address) as anonymous:
        assert anonymous.health() == "SERVING"
        assert SERVICE_NAME in ProtoReflectionDescriptorDatabase(anonymous.channel).get_services()


def test_tls_with_a_trusted_certificate_and_token(secure_server, certificate):
    with LongShapClient(secure_server.address, token=TOKEN, tls_ca=certificate[0]) as client:
        assert client.list_models().models[0].name == "tiny"
        assert client.health() == "SERVING"


def test_tls_refuses_plaintext_and_untrusted_certificates(secure_server):
    other_ca, _ = self_signed_certificate()
    for client in (LongShapClient(secure_server.address, token=TOKEN, timeout=3), LongShapClient(secure_server.address, token=TOKEN, tls_ca=other_ca, timeout=3)):
        with client, pytest.raises(LongShapError) as failure:
            client.list_models()
        assert failure.value.code == grpc.StatusCode.UNAVAILABLE


def _stop_in_background(server: ServerThread, grace: float) -> threading.Thread:
    thread = threading.Thread(target=server.stop, args=(grace,))
    thread.start()
    return thread


def test_shutdown_reports_not_serving_and_cancels_streams_after_the_grace(tiny_explainer):
    server = ServerThread(ServerConfig(port=0, limits=LIMITS), {"tiny": tiny_explainer}).start()
    with grpc.insecure_channel(server.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=SERVICE_NAME))
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        slow = pb_grpc.ExplainerStub(channel).Explain(slow_request())
        next(slow)
        started = time.monotonic()
        stopper = _stop_in_background(server, 0.5)
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        with pytest.raises(grpc.RpcError):
            list(slow)
        stopper.join(10)
        assert not stopper.is_alive() and time.monotonic() - started < 3
    assert wait_until(lambda: server.running.service.worker.pending == 0, 5) < 2


def test_shutdown_lets_a_stream_finish_within_the_grace(tiny_explainer):
    server = ServerThread(ServerConfig(port=0, limits=LIMITS), {"tiny": tiny_explainer}).start()
    with grpc.insecure_channel(server.address) as channel:
        call = pb_grpc.ExplainerStub(channel).Explain(qa_request(budget=20))
        next(call)
        stopper = _stop_in_background(server, 30)
        assert [e.WhichOneof("event") for e in call][-1] == "done"
        stopper.join(10)
    assert not stopper.is_alive()


def test_longshap_serve_logs_json_requests_and_stops_on_sigterm(tiny_llama_dir, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    command = [sys.executable, "-m", "longshap.client.cli", "serve", "--model", f"tiny={tiny_llama_dir}", "--port", "0", "--token-file", str(token_file), "--grace", "1"]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        entries = []
        for line in process.stderr:
            if line.startswith("{"):
                entries.append(json.loads(line))
                if entries[-1]["message"] == "listening":
                    break
        address = f"127.0.0.1:{entries[-1]['port']}"
        with LongShapClient(address, token=TOKEN) as client:
            assert [m.name for m in client.list_models().models] == ["tiny"]
            assert [e.WhichOneof("event") for e in client.explain_events(quick_request())][-1] == "done"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        entries += [json.loads(line) for line in process.stderr if line.startswith("{")]
    finally:
        process.kill()
    request = next(e for e in entries if e["message"] == "request")
    assert {k: request[k] for k in ("method", "model", "outcome")} == {"method": "Explain", "model": "tiny", "outcome": "OK"}
    assert request["id"] and request["evaluations"] > 0 and request["wall_seconds"] >= 0 and request["characters"] > 0
    assert [e["message"] for e in entries][-2:] == ["shutting down", "stopped"]


def test_serve_model_flags_reach_the_loaded_models(tiny_llama_dir):
    from longshap.server.app import build_parser, load_explainers, model_options

    args = build_parser().parse_args(["--model", f"tiny={tiny_llama_dir}", "--dtype", "bfloat16", "--device", "cpu", "--attn-implementation", "eager"])
    explainer = load_explainers(args.model, load_options=model_options(args))["tiny"]
    model = explainer.engine.model
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config._attn_implementation == "eager"


def test_longshap_serve_refuses_bad_options():
    result = subprocess.run([sys.executable, "-m", "longshap.client.cli", "serve", "--tls-cert", "x.pem"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2 and "--tls-cert and --tls-key go together" in result.stderr


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("gemma-3-270m", ("gemma-3-270m", None)),
        ("small=/models/tiny-llama", ("small", "/models/tiny-llama")),
        ("/models/tiny-llama", ("tiny-llama", "/models/tiny-llama")),
        ("/models/tiny-llama/", ("tiny-llama", "/models/tiny-llama/")),
    ],
)
def test_model_specs_name_the_served_models(spec, expected):
    assert parse_model_spec(spec) == expected


@pytest.mark.parametrize("spec", ["=/models/x", "a/b=/models/x", "../x=/models/x"])
def test_model_spec_names_cannot_be_paths(spec):
    with pytest.raises(ValueError, match="--model"):
        parse_model_spec(spec)
