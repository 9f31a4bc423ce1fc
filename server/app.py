"""`longshap serve`: the grpc.aio server with health, reflection, optional auth and TLS.

Models are loaded once at start and served under names; requests can only name
them, never a path. SIGTERM/SIGINT flip health to NOT_SERVING, let in-flight
streams finish for the grace period, then cancel them (which stops their work).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from longshap.proto.wire import SERVICE_NAME
from longshap.server import logs
from longshap.server.auth import BearerTokenInterceptor
from longshap.hierarchy.engines.loading import ENGINES
from longshap.hierarchy.options import ATTENTION_IMPLEMENTATIONS, DTYPES, QUANTIZATIONS
from longshap.server.config import DEFAULT_MODEL, ServerConfig, parse_model_spec
from longshap.server.limits import add_limit_options, bounded, limits_from_args

if TYPE_CHECKING:
    from longshap.server.service import ExplainerService

log = logging.getLogger("longshap.server")
SERVER_OPTIONS = [("grpc.so_reuseport", 0)]
"""gRPC turns SO_REUSEPORT on by default: a second server on the same port would start and take half the traffic."""
STOP_WAIT_SECONDS = 5.0
"""After the grace period, how long a cancelled model job may take to notice before the process exits anyway."""


class StartError(Exception):
    """The server cannot listen where it was asked to."""


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    service: ExplainerService
    health: health.aio.HealthServicer
    owned: list = field(default_factory=list)
    """What the server started for its models (batchers) and stops with itself; given engines stay the caller's."""

    async def stop(self, grace: float | None) -> None:
        """Report NOT_SERVING, let in-flight calls finish for `grace` seconds, then cancel them."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.service.worker.shutdown()
        for engine in self.owned:
            engine.close()


def load_explainers(specs: Sequence[str], weights: bool = True, load_options: Mapping | None = None, threads: int | None = None) -> dict:
    """Load every configured model once (the first is the default).

    Without `weights` (Ray mode: the replicas hold the models) only tokenizers and configs
    are loaded. `load_options` (the draft model, device, dtype, quantization,
    attn_implementation) apply to every model; see `model_options`. `threads` is
    llama.cpp's thread count (torch's is set once for the process).
    """
    from longshap.hierarchy import Explainer

    explainers = {}
    for spec in specs:
        name, path = parse_model_spec(spec)
        if name in explainers:
            raise ValueError(f"--model {spec!r}: the name {name!r} is used twice")
        log.info("loading model", extra={"fields": {"model": name, "path": path or "embedded", **(load_options or {})}})
        if (load_options or {}).get("engine") == "openai":
            path = None  # the server's model (--remote-model); --model only names it here
        explainers[name] = Explainer.from_pretrained(path, weights=weights, threads=threads, **(load_options or {}))
    return explainers


MODEL_FLAGS: dict[str, dict[str, Any]] = {
    "--engine": {
        "choices": ENGINES, "default": "auto",
        "help": "what runs the model: transformers (torch), llamacpp (a GGUF file, pip install 'longshap[llamacpp]'), openai (a server "
                "named by --base-url), or auto: llamacpp for GGUF models on a CPU when installed and no torch option is set, else transformers",
    },
    "--base-url": {"metavar": "URL", "help": "the openai engine's OpenAI-compatible server (vLLM, SGLang, llama.cpp), e.g. http://127.0.0.1:8000/v1"},
    "--remote-model": {"metavar": "NAME", "help": "the model's name on that server (default: the one it serves)"},
    "--api-key-file": {"metavar": "FILE", "help": "a file holding the server's API key, sent as a bearer token"},
    "--tokenizer": {"metavar": "DIR", "help": "a local copy of the server's tokenizer (default: the server's tokenize endpoint)"},
    "--device": {"help": "torch device for the models (default: cuda when available, else cpu)"},
    "--dtype": {
        "choices": DTYPES, "default": "float32",
        "help": "weights and activations (default float32; bfloat16 ran a 10-passage explanation 2.7x faster on an AMX CPU, 1.5x on AVX512-BF16 without AMX)",
    },
    "--quantization": {"choices": QUANTIZATIONS, "help": "bitsandbytes weight quantisation (pip install 'longshap[quantization]')"},
    "--attn-implementation": {
        "choices": ("auto", *ATTENTION_IMPLEMENTATIONS), "default": "auto",
        "help": "attention kernel (auto: flash-attention 2 on CUDA when installed, else SDPA; on CPUs sdpa_blocked, SDPA that skips the keys a mask hides)",
    },
    "--draft-model": {
        "metavar": "NAME|PATH",
        "help": f"a smaller model with the same tokenizer that proposes the tokens of every answer decoded ({DEFAULT_MODEL} or a local model directory)",
    },
}
"""How models are loaded: the flags shared by `longshap serve` and `longshap explain --local`."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model loading")
    for flag, settings in MODEL_FLAGS.items():
        group.add_argument(flag, **settings)


def model_options(args: argparse.Namespace) -> dict:
    """The `MODEL_FLAGS` as `Explainer.from_pretrained` keyword arguments (draft_model, then `hierarchy.models.load_model`'s)."""
    return {_dest(flag): getattr(args, _dest(flag)) for flag in MODEL_FLAGS}


def given_model_flags(args: argparse.Namespace) -> list[str]:
    """The model-loading flags set to something other than their default."""
    return [flag for flag, settings in MODEL_FLAGS.items() if getattr(args, _dest(flag)) != settings.get("default")]


def _dest(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


async def start_server(config: ServerConfig, explainers: Mapping, backends: Mapping | None = None) -> RunningServer:
    """Start serving `explainers` (name -> Explainer; the first is the default) and return the bound server.

    `backends` (name -> an engine, e.g. server.ray_backend.RayEngine) run those models'
    calls instead of the explainers' own engines; they stay the caller's to close.
    """
    # These import the engine (torch): only when serving.
    from longshap.server.batching import serving_explainers
    from longshap.server.service import ExplainerService, add_to_server

    if not explainers:
        raise ValueError("at least one model must be served")
    interceptors = [BearerTokenInterceptor(config.token)] if config.token else []
    server = grpc.aio.server(interceptors=interceptors, options=SERVER_OPTIONS)
    limits = config.limits
    served, owned = serving_explainers(explainers, backends or {}, config.concurrency, config.batching, limits.max_budget, limits.max_players)
    service = ExplainerService(served, next(iter(served)), limits, config.concurrency)
    add_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
    )
    address = f"{config.host}:{config.port}"
    try:
        if config.tls_cert is not None:
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(config.tls_key, config.tls_cert)]))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError:  # grpc's only word on it is "Failed to bind"
        raise StartError(f"cannot listen on {address}: the port is in use or the host is not an address of this machine") from None
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("listening", extra={"fields": {"host": config.host, "port": port, "models": list(explainers), "tls": config.tls_cert is not None}})
    return RunningServer(server, port, service, health_servicer, owned)


async def serve(config: ServerConfig, explainers: Mapping, backends: Mapping | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    running = await start_server(config, explainers, backends)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down", extra={"fields": {"grace_seconds": config.grace_seconds}})
    await running.stop(config.grace_seconds)
    if not await asyncio.to_thread(running.service.worker.wait_idle, STOP_WAIT_SECONDS):
        log.error("a model job did not stop; exiting without waiting for it")
        logging.shutdown()
        os._exit(1)  # the worker thread is not a daemon: a normal exit would wait for it
    log.info("stopped")


class ServerThread:
    """A server on its own event loop in a background thread: for embedding and tests."""

    def __init__(self, config: ServerConfig, explainers: Mapping, backends: Mapping | None = None) -> None:
        self._config, self._explainers, self._backends = config, explainers, backends
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="longshap-server", daemon=True)
        self.running: RunningServer | None = None
        self._error: BaseException | None = None

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self.running = self._loop.run_until_complete(start_server(self._config, self._explainers, self._backends))
        except BaseException as error:  # noqa: BLE001 - reported by start()
            self._error = error
        self._ready.set()
        if self._error is None:
            self._loop.run_forever()
        self._loop.close()

    @property
    def port(self) -> int:
        if self.running is None:
            raise RuntimeError("the server is not running")
        return self.running.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}" if self._config.host in ("127.0.0.1", "0.0.0.0") else f"{self._config.host}:{self.port}"

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    def stop(self, grace: float | None = 0) -> None:
        """Gracefully stop (see RunningServer.stop) and end the thread."""
        if self.running is not None and self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.running.stop(grace), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="longshap serve", description="Serve hierarchical Shapley explanations over gRPC.")
    parser.add_argument("--model", action="append", metavar="NAME=PATH|PATH", help=f"a model to serve, repeatable; the first is the default (default: {DEFAULT_MODEL}, embedded)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=bounded(int, 0, 65535), default=50051, help="0..65535; 0 picks a free port (logged)")
    parser.add_argument("--token-file", type=Path, help="require 'authorization: Bearer <token>' with the token in this file (or set LONGSHAP_TOKEN)")
    parser.add_argument("--tls-cert", type=Path, help="PEM certificate chain; enables TLS with --tls-key")
    parser.add_argument("--tls-key", type=Path, help="PEM private key")
    add_limit_options(parser)
    parser.add_argument("--grace", type=bounded(float, 0, 24 * 3600), default=10.0, help="seconds in-flight and queued requests get to finish at shutdown")
    parser.add_argument(
        "--threads", type=bounded(int, 1, 1024), default=default_threads(),
        help="torch's or llama.cpp's threads for the model (default: half the CPUs, at most 4; more than the free cores makes it many times slower)",
    )
    add_model_options(parser)
    scale = parser.add_argument_group("scale")
    scale.add_argument("--concurrency", type=bounded(int, 1, 1024), default=1, help="requests run at once (their forward passes are merged); more wait in the queue")
    scale.add_argument("--no-batching", dest="batching", action="store_false", help="run concurrent requests' passes one call at a time instead of merging them")
    scale.add_argument("--ray", action="store_true", help="run the models as Ray actor replicas (pip install 'longshap[ray]')")
    scale.add_argument("--address", help="Ray cluster to join (default: start a local one)")
    scale.add_argument("--replicas", type=bounded(int, 1, 1024), default=2, help="replicas per model with --ray")
    return parser


def default_threads() -> int:
    """Half the CPUs this process may use, at most 4: torch's default (all of them) collapses 10-50x
    as soon as another process competes for a core, and one worker leaves the rest to the event loop."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, available // 2))


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """Check the options and read the token and TLS files."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    token = args.token_file.read_text(encoding="utf-8").strip() if args.token_file else os.environ.get("LONGSHAP_TOKEN") or None
    if args.token_file and not token:
        raise ValueError(f"--token-file {args.token_file}: the file is empty")
    if args.tls_cert is not None:
        check_tls_files(args.tls_cert, args.tls_key)
    if args.address and not args.ray:
        raise ValueError("--address is the Ray cluster's: it needs --ray")
    if args.ray and args.engine == "openai":
        raise ValueError("--ray: the openai engine's model runs on its server, not on replicas")
    return ServerConfig(
        args.host, args.port, limits_from_args(args), token,
        args.tls_cert.read_bytes() if args.tls_cert else None, args.tls_key.read_bytes() if args.tls_key else None, args.grace,
        concurrency=args.concurrency, batching=args.batching,
    )


def check_tls_files(cert: Path, key: Path) -> None:
    """A readable PEM certificate chain and its private key, checked now: gRPC would fail later with a traceback."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key)
    except ssl.SSLError as error:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: not a PEM certificate chain with its private key ({error.reason or error})") from None
    except OSError as error:
        raise ValueError(f"--tls-cert {cert} / --tls-key {key}: cannot read: {error.strerror or error}") from None


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None, args: argparse.Namespace | None = None) -> int:
    """Run the server; 0 after a clean shutdown, 2 on bad options, 1 if a model cannot be loaded."""
    args = args or build_parser().parse_args(argv)
    logs.configure()
    try:
        config = config_from_args(args)
    except (ValueError, OSError) as error:
        print(f"longshap serve: {error}", file=sys.stderr)
        return 2
    specs = args.model or [DEFAULT_MODEL if args.engine != "openai" else args.remote_model or "remote"]
    try:
        set_threads(args.threads)
        explainers = load_explainers(specs, weights=not args.ray, load_options=model_options(args), threads=args.threads)
    except (ValueError, OSError, RuntimeError) as error:
        print(f"longshap serve: cannot load a model: {error}", file=sys.stderr)
        return 1
    try:
        if not args.ray:
            asyncio.run(serve(config, explainers))
            return 0
        return _serve_on_ray(config, explainers, specs, args)
    except StartError as error:
        print(f"longshap serve: {error}", file=sys.stderr)
        return 2


def _serve_on_ray(config: ServerConfig, explainers: Mapping, specs: Sequence[str], args: argparse.Namespace) -> int:
    """Serve with every model's forward passes on `args.replicas` Ray actors (a local cluster without --address)."""
    try:
        from longshap.server import ray_backend
    except ImportError as error:
        print(f"longshap serve: {error}", file=sys.stderr)
        return 2
    connected = ray_backend.connect(args.address)
    try:
        log.info("starting replicas", extra={"fields": {"replicas": args.replicas, "address": args.address or "local"}})
        backends = {
            name: ray_backend.RayEngine(explainers[name].engine, path, args.replicas, load_options=model_options(args))
            for name, path in map(parse_model_spec, specs)
        }
        try:
            asyncio.run(serve(config, explainers, backends))
        finally:
            for backend in backends.values():
                backend.close()
    finally:
        if connected:
            ray_backend.disconnect()
    return 0
