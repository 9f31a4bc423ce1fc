"""`make demo`: serve the default model, explain a real multi-passage NQ answer through the CLI.

Starts `longshap serve` on 127.0.0.1 (a free port) with the embedded Gemma 3 270M,
waits for its health to be SERVING, writes the demo row's passages (the gold one
among seeded distractors, from ../shared/data/nq) to a temporary JSONL file, runs
`longshap explain` against the server (levels stream in as they finish) with an HTML
report in reports/demo.html, and stops the server.
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from longshap.client.api import LongShapClient, LongShapError
from longshap.client.data import load_nq, nq_prompt

DEMO_ROW = 5  # "when did the angel of the north get built": Gemma 3 270M answers it from its passage
ROOT = Path(__file__).resolve().parent.parent


def start_server(model: str | None) -> tuple[subprocess.Popen, str]:
    """Start `longshap serve --port 0` and read the bound port from its JSON log."""
    command = [sys.executable, "-m", "longshap.client.cli", "serve", "--host", "127.0.0.1", "--port", "0", *(["--model", model] if model else [])]
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    log = process.stderr
    assert log is not None  # stderr=PIPE
    for line in log:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("message") == "listening":
            # Keep draining the server's log (request lines) so a full pipe never blocks it.
            threading.Thread(target=lambda: sys.stderr.writelines(log), daemon=True).start()
            return process, f"127.0.0.1:{entry['port']}"
    raise RuntimeError(f"the server exited with code {process.wait()} before listening")


def wait_serving(address: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with LongShapClient(address) as client:
        while True:
            try:
                if client.health(timeout=2.0) == "SERVING":
                    return
            except LongShapError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server at {address} did not report SERVING within {timeout:.0f} s")
            time.sleep(0.2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", type=int, default=DEMO_ROW, help="NQ row whose question is asked")
    parser.add_argument("--distractors", type=int, default=3)
    parser.add_argument("--budget", type=int, default=60, help="model evaluations per level")
    parser.add_argument("--model", help="served model (NAME=PATH or a local directory; default: embedded Gemma 3 270M)")
    parser.add_argument("--html", type=Path, default=ROOT / "reports" / "demo.html")
    args = parser.parse_args(argv)

    prompt = nq_prompt(load_nq(), args.row, args.distractors, seed=0)
    print(f"question: {prompt.question}\ngold answers: {prompt.answers}; gold passage: d{prompt.gold_index}", flush=True)
    started = time.perf_counter()
    server, address = start_server(args.model)
    try:
        wait_serving(address)
        print(f"server SERVING on {address} after {time.perf_counter() - started:.1f} s", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            docs = Path(folder) / "docs.jsonl"
            docs.write_text("".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in prompt.documents), encoding="utf-8")
            command = [
                sys.executable, "-m", "longshap.client.cli", "explain", "--server", address, "--question", prompt.question,
                "--docs-jsonl", str(docs), "--budget", str(args.budget), "--seed", "0", "--html", str(args.html),
            ]
            return subprocess.run(command, cwd=ROOT).returncode
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        print("server stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
