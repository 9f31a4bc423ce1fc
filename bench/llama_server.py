"""llama-cpp-python's OpenAI-compatible server on a free 127.0.0.1 port: the real peer of the openai engine's tests and benchmark.

It is started through a short launcher that turns llama.cpp's extra buffer types
(repacked kernels) off where llama.cpp was built with AMX kernels, which crash, as the
llamacpp engine does; the server itself has no option for it.
"""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

START_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


LAUNCH = (
    "import sys, llama_cpp.llama_cpp as lc\n"
    "from longshap.hierarchy.engines.llamacpp_model import built_with_amx\n"
    "default = lc.llama_model_default_params\n"
    "def params():\n"
    "    chosen = default(); chosen.use_extra_bufts = not built_with_amx(); return chosen\n"
    "lc.llama_model_default_params = params\n"
    "from llama_cpp.server.__main__ import main\n"
    "sys.argv = ['llama_cpp.server', *sys.argv[1:]]\n"
    "main()\n"
)


@contextmanager
def start_llama_server(gguf: Path, folder: Path, *options: str, threads: int = 1) -> Iterator[tuple[str, subprocess.Popen]]:
    """Yield the server's base URL (http://127.0.0.1:PORT/v1) and process once it answers; stop it afterwards."""
    port = free_port()
    log = folder / f"llama-server-{port}.log"
    command = [sys.executable, "-c", LAUNCH, "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", "2048", "--n_threads", str(threads), "--verbose", "false", *options]
    with open(log, "w") as output:
        server = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"llama_cpp.server did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1", server
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
