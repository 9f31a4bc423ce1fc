"""Worst cases the default limits allow: per level the most expensive request, alone and under 8 clients;
RSS after cancelled requests; how evenly a full queue serves retrying clients.

Run from the repository root: `python -m bench.load --worst-case [--tiny] [--deadline S] [--json PATH]`
(`--tiny`: a tiny random Llama built on the spot instead of the embedded default model).

- Most expensive request per level (document, sentence, word, token): a QA request with
  `levels=[level]`, so every unit of that level is a player of one game (as many as
  `--max-players` allows), `budget` at `--max-budget`, and the units as long as
  `--max-characters` per evaluation allows (at the token level one-letter words, and
  the placeholder's cost fills what the text leaves). It runs with a deadline; the figures are how long after the deadline the call
  ended, how long after it the worker was free (a small probe request's first event), and
  the server's peak RSS (VmHWM).
- Cancellations: RSS idle (after one small request), after 100 small requests each
  cancelled mid-run, and after 20 more completed.
- Fairness: 8 clients, each with the client library's retry policy, send small requests
  for a fixed time against a queue of 4; OK results per client.
"""
from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import grpc

from bench.common import print_table, write_json
from bench.load import requests, rss_mb, start_server
from longshap.client.api import LongShapClient, LongShapError
from longshap.proto.wire import pb, pb_grpc
from longshap.server.limits import Limits

LEVELS = ("document", "sentence", "word", "token")
CLIENTS = 8


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def most_expensive(level: str, limits: Limits) -> pb.ExplainRequest:
    """The costliest request of `level` the limits accept: max documents and budget, max players, max characters per evaluation.

    Units of the level are as many as one game may have (`max_players`, every unit of
    the first level being one game's players) and as long as the characters allow; at
    the token level one-letter words (a token each) and the placeholder's cost fill the rest.
    """
    question = "What is it?"
    documents = limits.max_documents
    room = limits.max_characters - len(question) - 400 * documents  # the template and titles
    units = limits.max_players if level != "document" else documents
    per_document = max(1, units // documents)
    placeholder = ""
    if level == "document":
        text = "a" * (room // documents)
    elif level == "sentence":
        text = " ".join(["a" * max(1, room // units - 3) + "."] * per_document)
    elif level == "word":
        text = " ".join(["a" * max(1, room // units - 1)] * per_document)
    else:
        text = " ".join(["a"] * per_document)
        placeholder = "p" * min(limits.max_field_characters, max(1, (room - 2 * units) // (2 * units + documents)))
    return pb.ExplainRequest(
        qa=pb.QAPrompt(question=question, documents=[pb.Document(title=f"d{i}", text=text) for i in range(documents)]),
        levels=[level], budget=limits.max_budget, target="a", placeholder=placeholder or None,
    )


def probe() -> pb.ExplainRequest:
    return requests()[3]


def run_case(address: str, pid: int, request: pb.ExplainRequest, clients: int, deadline: float) -> dict:
    """`clients` copies of `request` with `deadline`: worst seconds past the deadline, worker free after, outcomes, peak RSS."""
    channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 2**20)])
    stub = pb_grpc.ExplainerStub(channel)
    ends, outcomes = [], []
    lock = threading.Lock()

    def client() -> None:
        started = time.monotonic()
        try:
            for _ in stub.Explain(request, timeout=deadline):
                pass
            outcome = "OK"
        except grpc.RpcError as error:
            outcome = error.code().name
        with lock:
            ends.append(time.monotonic() - started - deadline)
            outcomes.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The worker is free when a small request gets its first event (queued requests have ended with their deadlines).
    for _ in stub.Explain(probe(), timeout=600):
        free = time.monotonic() - started - deadline
        break
    channel.close()
    return {
        "worst_past_deadline_s": max(ends), "free_after_deadline_s": free, "peak_rss_mb": peak_rss_mb(pid),
        "outcomes": "/".join(sorted(set(outcomes))),
    }


def cancellations(address: str, pid: int, count: int = 100) -> dict:
    stub = pb_grpc.ExplainerStub(grpc.insecure_channel(address))
    small = probe()
    list(stub.Explain(small, timeout=120))
    idle = rss_mb(pid)
    slow = pb.ExplainRequest(classification=small.classification, budget=5000)
    for _ in range(count):
        call = stub.Explain(slow, timeout=120)
        next(call)  # the answer event: the request is running
        time.sleep(0.2)
        call.cancel()
    time.sleep(1)
    cancelled = rss_mb(pid)
    for _ in range(20):
        list(stub.Explain(small, timeout=120))
    return {"rss_idle_mb": idle, "rss_after_cancels_mb": cancelled, "rss_after_more_mb": rss_mb(pid), "cancel_growth": cancelled / idle - 1}


def fairness(address: str, seconds: float) -> dict:
    ok = [0] * CLIENTS
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        with LongShapClient(address, timeout=120) as library:
            while time.monotonic() < stop_at:
                try:
                    list(library.explain_events(requests()[index % len(requests())]))
                    ok[index] += 1
                except LongShapError:
                    pass

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"ok_per_client": ok, "fairness_ratio": max(ok) / max(min(ok), 1)}


def main(args: argparse.Namespace) -> None:
    model = args.model
    if args.tiny:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from tiny_models import build_tiny_model_dir

        model = str(build_tiny_model_dir(Path(tempfile.mkdtemp()) / "tiny"))
    limits = Limits()
    table, figures = [], {"model": model or "gemma-3-270m", "deadline_s": args.deadline}
    for level in LEVELS:
        for clients in (1, CLIENTS):
            process, address = start_server(model, limits.queue_size, args.threads, concurrency=1)
            try:
                case = run_case(address, process.pid, most_expensive(level, limits), clients, args.deadline)
            finally:
                process.terminate()
                process.wait(timeout=60)
            table.append([level, clients, case["outcomes"], case["worst_past_deadline_s"], case["free_after_deadline_s"], case["peak_rss_mb"]])
            figures.update({f"{level}_{clients}_{key}": value for key, value in case.items()})
            print(f"{level}, {clients} client(s): {case}", flush=True)
    process, address = start_server(model, limits.queue_size, args.threads, concurrency=1)
    try:
        figures.update(cancellations(address, process.pid))
        figures.update(fairness(address, args.fairness_seconds))
    finally:
        process.terminate()
        process.wait(timeout=60)
    print_table(
        ["level", "clients", "outcomes", "worst s past deadline", "worker free s after deadline", "peak RSS MB"], table,
        f"Worst-case requests at the default limits, {figures['model']}, deadline {args.deadline:g} s",
    )
    print(f"\nRSS idle {figures['rss_idle_mb']:.0f} MB, after 100 cancelled requests {figures['rss_after_cancels_mb']:.0f} MB "
          f"({figures['cancel_growth']:+.1%}), after 20 more {figures['rss_after_more_mb']:.0f} MB")
    print(f"OK per client under {CLIENTS} retrying clients, queue {limits.queue_size}: {figures['ok_per_client']} "
          f"(max/min {figures['fairness_ratio']:.2f})")
    write_json(args.json, figures)
