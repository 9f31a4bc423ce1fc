"""Load: C concurrent streaming clients x R requests against a real `longshap serve` on 127.0.0.1.

Mixed QA and classification requests; every OK result is compared with the same request's
result from one client alone before the load (same seed, so it must match). Reports
OK / rejected (RESOURCE_EXHAUSTED, the bounded queue) / errors / hangs (no answer within the
per-request deadline) / wrong, the rejection latency, p50/p99 latency of OK requests,
throughput and the server's RSS at start, after 100 requests and at the end. Bounded in
count (C x R) and in time (--max-seconds: no new request after it); the server is stopped.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np

from bench.common import parser, print_table, write_json
from longshap.proto.wire import collect, pb, pb_grpc

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ("Paris", "Paris is the capital of France. It lies on the Seine."),
    ("Berlin", "Berlin is the capital of Germany. It lies on the Spree."),
    ("Rome", "Rome is the capital of Italy. It lies on the Tiber."),
]
QUESTIONS = ["What is the capital of France?", "Which river runs through Berlin?", "What is the capital of Italy?"]
TEXTS = ["a charming and funny journey", "a dull, lifeless and tiresome film", "the acting is fine but the plot drags", "an absolute delight from start to end"]


def requests() -> list[pb.ExplainRequest]:
    """The mixed workload: QA over three documents and sentiment classification, small budgets."""
    documents = [pb.Document(title=t, text=x) for t, x in DOCS]
    qa = [pb.ExplainRequest(qa=pb.QAPrompt(question=q, documents=documents), budget=16, levels=["document", "sentence"], max_new_tokens=4) for q in QUESTIONS]
    labels = ["negative", "positive"]
    classification = [pb.ExplainRequest(classification=pb.ClassificationPrompt(text=t, labels=labels), budget=16) for t in TEXTS]
    return qa + classification


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(model: str | None, queue_size: int, threads: int, concurrency: int = 1) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "longshap.client.cli", "serve", "--port", "0", "--queue-size", str(queue_size), "--threads", str(threads)]
    command += ["--concurrency", str(concurrency)]
    command += ["--model", model] if model else []
    process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    for line in process.stderr:
        if line.startswith("{") and json.loads(line)["message"] == "listening":
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()  # drain the request logs
            return process, f"127.0.0.1:{json.loads(line)['port']}"
    raise RuntimeError(f"the server did not start (exit {process.wait()})")


def values(explanation: dict) -> np.ndarray:
    return np.array([f["value"] for level in explanation["levels"] for f in level["features"]] + [explanation["full_value"], explanation["empty_value"]])


def main() -> None:
    args_parser = parser(__doc__.splitlines()[0])
    args_parser.add_argument("--clients", type=int, default=8)
    args_parser.add_argument("--requests", type=int, default=50, help="per client")
    args_parser.add_argument("--queue-size", type=int, default=4)
    args_parser.add_argument("--threads", type=int, default=1)
    args_parser.add_argument("--deadline", type=float, default=120.0, help="seconds per request; one not answered by then is a hang (--worst-case: each request's deadline)")
    args_parser.add_argument("--max-seconds", type=float, default=1800.0, help="no new request after this")
    args_parser.add_argument("--worst-case", action="store_true", help="the costliest requests the default limits allow (bench.worst_case)")
    args_parser.add_argument("--tiny", action="store_true", help="with --worst-case: a tiny random model built on the spot")
    args_parser.add_argument("--fairness-seconds", type=float, default=60.0, help="with --worst-case: how long the fairness clients run")
    args = args_parser.parse_args()
    if args.worst_case:
        from bench.worst_case import main as worst_case

        worst_case(args)
        return
    if args.quick:
        args.clients, args.requests = min(args.clients, 4), min(args.requests, 10)
    workload = requests()
    process, address = start_server(args.model, args.queue_size, args.threads)
    outcomes: list[tuple[str, float]] = []  # (kind, seconds)
    lock = threading.Lock()
    rss = {}
    try:
        channel = grpc.insecure_channel(address)
        stub = pb_grpc.ExplainerStub(channel)
        reference = [values(collect(stub.Explain(r, timeout=args.deadline))) for r in workload]
        rss["start"] = rss_mb(process.pid)
        stop_at = time.monotonic() + args.max_seconds

        def client(index: int) -> None:
            for number in range(args.requests):
                if time.monotonic() > stop_at:
                    return
                which = (index + number) % len(workload)
                started = time.monotonic()
                try:
                    result = values(collect(stub.Explain(workload[which], timeout=args.deadline)))
                    ok = result.shape == reference[which].shape and np.allclose(result, reference[which], atol=1e-5)
                    kind = "ok" if ok else "wrong"
                except grpc.RpcError as error:
                    kind = {grpc.StatusCode.RESOURCE_EXHAUSTED: "rejected", grpc.StatusCode.DEADLINE_EXCEEDED: "hang"}.get(error.code(), f"error {error.code().name}")
                elapsed = time.monotonic() - started
                with lock:
                    outcomes.append((kind, elapsed))
                    if len(outcomes) == 100:
                        rss["after 100"] = rss_mb(process.pid)
                if kind == "rejected":
                    time.sleep(0.05)  # back off a little, as a client should

        started = time.monotonic()
        clients = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        wall = time.monotonic() - started
        rss["end"] = rss_mb(process.pid)
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=60)
    kinds = [k for k, _ in outcomes]
    ok_seconds = np.array([s for k, s in outcomes if k == "ok"])
    rejected_ms = np.array([s * 1000 for k, s in outcomes if k == "rejected"])
    errors = sum(k.startswith("error") for k in kinds)
    figures = {
        "clients": args.clients, "requests_per_client": args.requests, "requests": len(outcomes), "ok": kinds.count("ok"),
        "rejected": kinds.count("rejected"), "errors": errors, "hangs": kinds.count("hang"), "wrong": kinds.count("wrong"),
        "rejection_ms_p50": float(np.median(rejected_ms)) if len(rejected_ms) else float("nan"),
        "rejection_ms_max": float(rejected_ms.max()) if len(rejected_ms) else float("nan"),
        "latency_s_p50": float(np.percentile(ok_seconds, 50)) if len(ok_seconds) else float("nan"),
        "latency_s_p99": float(np.percentile(ok_seconds, 99)) if len(ok_seconds) else float("nan"),
        "throughput_ok_per_s": len(ok_seconds) / wall, "wall_s": wall,
        "rss_mb_start": rss["start"], "rss_mb_after_100": rss.get("after 100", float("nan")), "rss_mb_end": rss["end"],
        "server_exit_code": exit_code, "model": args.model or "gemma-3-270m",
    }
    print_table(
        ["C x R", "OK", "rejected", "errors", "hangs", "wrong", "reject ms p50/max", "p50 s", "p99 s", "OK/s", "RSS MB start/100/end", "exit"],
        [[f"{args.clients} x {args.requests}", figures["ok"], figures["rejected"], errors, figures["hangs"], figures["wrong"],
          f"{figures['rejection_ms_p50']:.1f}/{figures['rejection_ms_max']:.1f}", figures["latency_s_p50"], figures["latency_s_p99"],
          figures["throughput_ok_per_s"], f"{rss['start']:.0f}/{figures['rss_mb_after_100']:.0f}/{rss['end']:.0f}", exit_code]],
        f"Load on {figures['model']} (queue {args.queue_size}, --threads {args.threads})",
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
