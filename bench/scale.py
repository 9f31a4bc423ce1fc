"""Throughput under load: one request at a time vs cross-request batching vs Ray replicas.

Run from the repository root: `python -m bench.scale [--quick] [--json PATH] [--model DIR]`.
The same requests (SST-2 dev sentences explained at the word level, a fixed budget
each) are sent by `--clients` concurrent gRPC clients to a server on 127.0.0.1 in
each configuration: the single worker of old; N request threads with their passes
run one call at a time (batching off) or merged (batching on); and Ray with 1 and 2
replicas (a local cluster on 127.0.0.1; replicas share the machine's cores, so
replica gains are bounded by the cores there are). Reported: requests per minute,
p50/p99 latency, refusals, forward passes, and whether every configuration gave the
same values as the first (they must, up to float noise). Each server first answers
one warm-up request, not timed.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
from longshap.hierarchy import Explainer
from longshap.client.data import load_sst2
from longshap.proto.wire import collect, pb, pb_grpc
from longshap.server.app import ServerThread
from longshap.server.config import Limits, ServerConfig

from bench.common import parser, print_table, write_json

LABELS = ["negative", "positive"]


def requests(count: int, budget: int) -> list[pb.ExplainRequest]:
    sentences = [text for text, _ in load_sst2() if 8 <= len(text.split()) <= 20][:count]
    return [
        pb.ExplainRequest(classification=pb.ClassificationPrompt(text=text, labels=LABELS), budget=budget, seed=index)
        for index, text in enumerate(sentences)
    ]


def load(address: str, work: list[pb.ExplainRequest], clients: int) -> tuple[float, list[float], list[dict | None], int]:
    """Send every request once from `clients` threads; wall seconds, latencies, results (None: refused), refusals."""
    results: list[dict | None] = [None] * len(work)
    latencies: list[float] = []
    refused = [0]
    next_index = iter(range(len(work)))
    lock = threading.Lock()

    def client() -> None:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.ExplainerStub(channel)
            while True:
                with lock:
                    index = next(next_index, None)
                if index is None:
                    return
                started = time.perf_counter()
                try:
                    results[index] = collect(list(stub.Explain(work[index], timeout=3600)))
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    with lock:
                        refused[0] += 1
                    continue
                with lock:
                    latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return time.perf_counter() - started, latencies, results, refused[0]


def values(result: dict | None) -> np.ndarray:
    return np.array([f["value"] for level in result["levels"] for f in level["features"]]) if result else np.array([])


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=4, help="request threads of the concurrent configurations")
    p.add_argument("--no-ray", action="store_true", help="skip the Ray configurations")
    args = p.parse_args()
    count, budget = (8, 24) if args.quick else (24, 40)
    work = requests(count, budget)
    cores = os.cpu_count() or 1
    explainer = Explainer.from_pretrained(args.model, engine="transformers")
    limits = Limits(queue_size=len(work))
    configs = [
        ("one worker (before)", 1, True, 0),
        ("threads, batching off", args.concurrency, False, 0),
        ("threads, batching on", args.concurrency, True, 0),
    ]
    if not args.no_ray:
        configs += [("ray 1 replica, batching on", args.concurrency, True, 1), ("ray 2 replicas, batching on", args.concurrency, True, 2)]
    table, figures, reference = [], {"requests": len(work), "clients": args.clients, "budget": budget, "cores": cores}, None
    connected = False
    try:
        for name, concurrency, batching, replicas in configs:
            backends = {}
            if replicas:
                from longshap.server import ray_backend

                connected = ray_backend.connect(num_cpus=cores) or connected
                threads = max(1, cores // replicas)
                backends = {"model": ray_backend.RayEngine(explainer.engine, args.model, replicas=replicas, threads=threads)}
            config = ServerConfig(port=0, limits=limits, concurrency=concurrency, batching=batching)
            try:
                with ServerThread(config, {"model": explainer}, backends) as server:
                    load(server.address, work[:1], 1)  # warm-up: first-call costs (thread pools, replicas) are not charged
                    wall, latencies, results, refused = load(server.address, work, args.clients)
            finally:
                for backend in backends.values():
                    backend.close()
            got = [values(r) for r in results]
            reference = reference or got
            deviation = max((float(np.max(np.abs(a - b))) for a, b in zip(got, reference) if len(a) and len(a) == len(b)), default=0.0)
            passes = sum(r["stats"].get("forward_passes", 0) for r in results if r)
            row = [name, replicas or "-", ("on" if batching else "off") if concurrency > 1 else "-", len(latencies), refused,
                   60 * len(latencies) / wall, float(np.percentile(latencies, 50)), float(np.percentile(latencies, 99)), passes, deviation]
            table.append(row)
            key = name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
            figures.update({f"{key}_rpm": row[5], f"{key}_p50_s": row[6], f"{key}_p99_s": row[7], f"{key}_passes": passes})
            print(f"{name}: {row[5]:.1f} requests/min", flush=True)
    finally:
        if connected:
            from longshap.server import ray_backend

            ray_backend.disconnect()
    print_table(
        ["configuration", "replicas", "batching", "done", "refused", "requests/min", "p50 s", "p99 s", "forward passes", "max |value diff|"],
        table,
        f"{len(work)} SST-2 word-level explanations (budget {budget}), {args.clients} clients, {cores} cores, "
        f"model {args.model or 'gemma-3-270m'}",
    )
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
