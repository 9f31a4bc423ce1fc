"""Model replicas as Ray actors behind the same gRPC API (`longshap serve --ray`, `pip install 'longshap[ray]'`).

Each model is loaded by `replicas` actors. The rows of a scorer call (one request's,
or several requests' merged by server.batching) are sorted by their tokens and cut
into contiguous chunks, so rows that share a prefix stay together and each chunk
keeps the scorer's prefix reuse; chunks go to the least busy replica, and the chunks
of many requests share the replicas.

While waiting, the caller polls its should_stop (cancellation, deadline): when it
fires, every replica is told to stop that call, which its scorer checks before
every decoder layer, so the replicas are freed at once. A replica that dies is
replaced and its chunk is sent again; results and costs are taken only from chunks
that finished, once each, so nothing is lost or counted twice.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError("Ray replicas need Ray: pip install 'longshap[ray]'") from error

from longshap.hierarchy.errors import Cancelled
from longshap.server.batching import POLL_S, Work, run_on_scorer, stats_delta

log = logging.getLogger("longshap.server")
MAX_ATTEMPTS = 3
"""A chunk whose replica dies this many times fails the call instead of killing replica after replica."""
STOP_MEMORY_S = 600.0
"""How long a replica remembers a stopped call (chunks of it may still be queued)."""


_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
LOCAL_START_ATTEMPTS = 2
"""A local cluster whose raylet misses Ray's 30 s start window is started once more: on a
busy 2-core machine it once never came up (no raylet log at all), and came up at once after."""
_saved_switch: tuple[str | None, bool] | None = None


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join the Ray cluster at `address`, or start a local one on 127.0.0.1 only, without a dashboard.

    Ray replaces 127.0.0.1 by the machine's reachable address unless multi-node
    clusters are switched off (its switch for laptops), so a local cluster switches
    them off for this process and Ray's own processes until `disconnect`.
    Returns whether this call connected (False when Ray was already initialised).
    """
    global _saved_switch
    if ray.is_initialized():
        return False
    if address is not None:
        ray.init(address=address, log_to_driver=False)
        return True
    constants = ray._private.ray_constants
    _saved_switch = (os.environ.get(_CLUSTER_SWITCH), constants.ENABLE_RAY_CLUSTER)
    os.environ[_CLUSTER_SWITCH], constants.ENABLE_RAY_CLUSTER = "0", False
    for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
        try:
            ray.init(include_dashboard=False, num_cpus=num_cpus, log_to_driver=False)
            break
        except Exception as error:  # Ray raises a bare Exception when its raylet misses the start window
            if "timed out during startup" not in str(error) or attempt == LOCAL_START_ATTEMPTS:
                raise
            log.warning("the local Ray cluster did not start (%s); starting it again", error)
            ray.shutdown()
    return True


def disconnect() -> None:
    """Shut Ray down in this process (a local cluster with it) and undo `connect`'s switch."""
    global _saved_switch
    ray.shutdown()
    if _saved_switch is not None:
        environ, ray._private.ray_constants.ENABLE_RAY_CLUSTER = _saved_switch
        if environ is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = environ
        _saved_switch = None


class Replica:
    """One copy of a model in a Ray worker process; runs one chunk at a time, can be told to stop a call."""

    def __init__(self, model_path: str | None, max_batch_tokens: int, threads: int, load_options: dict) -> None:
        import torch
        from longshap.hierarchy import Explainer

        torch.set_num_threads(threads)
        self.scorer = Explainer.from_pretrained(model_path, max_batch_tokens=max_batch_tokens, **load_options).scorer
        self._lock = threading.Lock()
        self._stopped: dict[str, float] = {}

    def ready(self) -> int:
        return os.getpid()

    def run(self, call_id: str, work: Work) -> tuple[list, dict]:
        with self._lock:
            if call_id in self._stopped:
                raise Cancelled("explanation cancelled")
            self.scorer.should_stop = lambda: call_id in self._stopped
            try:
                before = self.scorer.stats.as_dict()
                results = run_on_scorer(self.scorer, work)
                return results, stats_delta(before, self.scorer.stats.as_dict())
            finally:
                self.scorer.should_stop = None

    def stop(self, call_id: str) -> None:
        """Stop `call_id`'s running chunk (at the next decoder layer) and refuse its queued ones."""
        now = time.monotonic()
        self._stopped = {c: t for c, t in self._stopped.items() if now - t < STOP_MEMORY_S}
        self._stopped[call_id] = now

    def stopped_calls(self) -> int:
        return len(self._stopped)


class RayBackend:
    """`replicas` Ray actors serving one model; an Executor (server.batching) for the server.

    Needs a connected Ray (see `connect`). `chunk_rows` bounds the rows per chunk;
    `threads` is each replica's torch thread count (and the CPUs it reserves); `load_options` go to
    every replica's `hierarchy.models.load_model` (device, dtype, quantization, attn_implementation).
    """

    def __init__(
        self, model_path: str | None, replicas: int = 2, chunk_rows: int = 64, threads: int = 1,
        max_batch_tokens: int = 4096, ready_timeout_s: float = 300.0, load_options: dict | None = None,
    ) -> None:
        if replicas < 1 or chunk_rows < 1 or threads < 1:
            raise ValueError("replicas, chunk_rows and threads must be at least 1")
        self.chunk_rows = chunk_rows
        self._actor = ray.remote(Replica).options(num_cpus=threads, max_concurrency=2, max_restarts=0)
        self._arguments = (model_path, max_batch_tokens, threads, dict(load_options or {}))
        self._lock = threading.Lock()
        self.replicas = [self._actor.remote(*self._arguments) for _ in range(replicas)]
        self._busy = [0] * replicas
        self.chunks_done = [0] * replicas
        """Chunks each replica slot finished (a replaced replica's slot keeps counting)."""
        self.replaced = 0
        self.retried = 0
        # ray's ActorHandle stub types actor methods as plain methods, without `.remote`.
        ray.get([replica.ready.remote() for replica in self.replicas], timeout=ready_timeout_s)  # type: ignore[attr-defined]

    # ---- chunks -------------------------------------------------------------------
    def _chunks(self, work: Work) -> list[list[int]]:
        """Row indices in token order, cut into contiguous chunks spread over the replicas."""
        def tokens(index: int) -> list[int]:
            row = work.rows[index]
            return list(row[0]) if work.kind == "score" else list(row)

        order = sorted(range(len(work.rows)), key=tokens)
        size = max(1, min(self.chunk_rows, -(-len(order) // len(self.replicas))))
        return [order[start : start + size] for start in range(0, len(order), size)]

    def _submit(self, call_id: str, chunk: Work) -> tuple[ray.ObjectRef, int, object]:
        with self._lock:
            slot = min(range(len(self.replicas)), key=lambda s: self._busy[s])
            self._busy[slot] += 1
            replica = self.replicas[slot]
        return replica.run.remote(call_id, chunk), slot, replica  # type: ignore[attr-defined]  # ray stub: see __init__

    def _release(self, slot: int, done: bool) -> None:
        with self._lock:
            self._busy[slot] -= 1
            self.chunks_done[slot] += done

    def _replace(self, slot: int, dead: object) -> None:
        """Start a new replica in a dead one's slot (once, however many of its chunks report the death)."""
        with self._lock:
            if self.replicas[slot] is dead:
                self.replicas[slot] = self._actor.remote(*self._arguments)
                self.replaced += 1
                log.warning("replica died; replaced", extra={"fields": {"slot": slot}})

    # ---- the Executor interface ----------------------------------------------------
    def run(self, work: Work, should_stop: Callable[[], bool], caller: object = None) -> tuple[list, dict]:
        call_id = uuid.uuid4().hex
        chunks = self._chunks(work)
        results: list = [None] * len(work.rows)
        stats: Counter = Counter()
        pending: dict = {}
        for number, chunk in enumerate(chunks):
            ref, slot, replica = self._submit(call_id, _rows(work, chunk))
            pending[ref] = (number, slot, replica, 1)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                if should_stop():
                    raise Cancelled("explanation cancelled")
                for ref in ready:
                    number, slot, replica, attempt = pending.pop(ref)
                    try:
                        chunk_results, chunk_stats = ray.get(ref)
                    except RayActorError:
                        self._release(slot, done=False)
                        self._replace(slot, replica)
                        if attempt >= MAX_ATTEMPTS:
                            raise RuntimeError(f"a replica died {attempt} times running the same rows") from None
                        self.retried += 1
                        retry, new_slot, new_replica = self._submit(call_id, _rows(work, chunks[number]))
                        pending[retry] = (number, new_slot, new_replica, attempt + 1)
                        continue
                    except RayTaskError as error:
                        self._release(slot, done=False)
                        raise error.as_instanceof_cause() from None
                    self._release(slot, done=True)
                    for index, result in zip(chunks[number], chunk_results):
                        results[index] = result
                    stats.update(chunk_stats)
        except BaseException:
            self._stop(call_id, pending)
            raise
        return results, dict(stats)

    def _stop(self, call_id: str, pending: dict) -> None:
        """Tell every replica to stop `call_id`; its unfinished chunks free their slots."""
        for _, slot, _, _ in pending.values():
            self._release(slot, done=False)
        for replica in list(self.replicas):
            replica.stop.remote(call_id)  # type: ignore[attr-defined]  # ray stub: see __init__

    def close(self) -> None:
        for replica in self.replicas:
            ray.kill(replica)  # type: ignore[arg-type]  # ray stub: `.remote()` may return the class itself


def _rows(work: Work, indices: list[int]) -> Work:
    return Work(work.kind, [work.rows[i] for i in indices], work.max_new_tokens, work.tree)
