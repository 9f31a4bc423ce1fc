"""Model replicas as Ray actors behind the engine protocol (`longshap serve --ray`, `pip install 'longshap[ray]'`).

`RayEngine` implements `hierarchy.engines.base.Engine`: tokenisation runs in this
process (a model loaded without weights), the model calls on `replicas` actors that
each hold a transformers engine. The rows of a call (one request's, or several
requests' merged by `server.batching`) are sorted by their tokens and cut into
contiguous chunks, so rows that share a prefix stay together and each chunk keeps
the engine's prefix reuse; chunks go to the least busy replica, and the chunks of
many requests share the replicas. Gradient methods run whole on one replica.

While waiting, the caller polls its run context (cancellation, deadline): when it
fires, every replica is told to stop that call, which its engine checks before
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


try:
    import ray
    from ray.exceptions import RayActorError, RayTaskError
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError("Ray replicas need Ray: pip install 'longshap[ray]'") from error

from longshap.hierarchy.engines.base import POLL_S, CacheScope, Engine, RunContext
from longshap.hierarchy.engines.gradient_spec import GradientResult, GradientSpec
from longshap.hierarchy.engines.work import Work, WorkEngine
from longshap.hierarchy.errors import Cancelled

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
    """One copy of a model in a Ray worker process; runs one call at a time, can be told to stop a call."""

    def __init__(self, model_path: str | None, engine_options: dict, threads: int, load_options: dict) -> None:
        import torch
        from longshap.hierarchy import Explainer

        torch.set_num_threads(threads)
        self.engine = Explainer.from_pretrained(model_path, engine_options=engine_options, threads=threads, **load_options).engine
        self.scope = CacheScope()
        """Prefix states kept across this replica's calls."""
        self._stopped: dict[str, float] = {}

    def ready(self) -> int:
        return os.getpid()

    def run(self, call_id: str, work: Work) -> tuple[list, dict]:
        context = self._context(call_id)
        return work.run(self.engine, context), context.stats.as_dict()

    def attribute(self, call_id: str, spec: GradientSpec) -> tuple[GradientResult, dict]:
        context = self._context(call_id)
        return self.engine.attribute_tokens(spec, context), context.stats.as_dict()

    def _context(self, call_id: str) -> RunContext:
        if call_id in self._stopped:
            raise Cancelled("explanation cancelled")
        return RunContext(lambda: call_id in self._stopped, cache=self.scope)

    def stop(self, call_id: str) -> None:
        """Stop `call_id`'s running chunk (at the next decoder layer) and refuse its queued ones."""
        now = time.monotonic()
        self._stopped = {c: t for c, t in self._stopped.items() if now - t < STOP_MEMORY_S}
        self._stopped[call_id] = now

    def stopped_calls(self) -> int:
        return len(self._stopped)


class RayEngine(WorkEngine):
    """`replicas` Ray actors serving one model, behind the engine protocol.

    Needs a connected Ray (see `connect`). `front` tokenises in this process (load it
    without weights); `chunk_rows` bounds the rows per chunk; `threads` is each
    replica's torch thread count (and the CPUs it reserves); `engine_options` go to
    every replica's `TransformersEngine`, `load_options` to its `load_model`.
    """

    def __init__(
        self, front: Engine, model_path: str | None, replicas: int = 2, chunk_rows: int = 64, threads: int = 1,
        ready_timeout_s: float = 300.0, engine_options: dict | None = None, load_options: dict | None = None,
    ) -> None:
        if replicas < 1 or chunk_rows < 1 or threads < 1:
            raise ValueError("replicas, chunk_rows and threads must be at least 1")
        super().__init__(front)
        self.chunk_rows = chunk_rows
        self._actor = ray.remote(Replica).options(num_cpus=threads, max_concurrency=2, max_restarts=0)
        self._arguments = (model_path, dict(engine_options or {}), threads, dict(load_options or {}))
        self._lock = threading.Lock()
        self.replicas = [self._actor.remote(*self._arguments) for _ in range(replicas)]
        self._busy = [0] * replicas
        self.chunks_done = [0] * replicas
        """Chunks each replica slot finished (a replaced replica's slot keeps counting)."""
        self.replaced = 0
        self.retried = 0
        # ray's ActorHandle stub types actor methods as plain methods, without `.remote`.
        ray.get([replica.ready.remote() for replica in self.replicas], timeout=ready_timeout_s)  # type: ignore[attr-defined]

    # ---- the engine protocol (text and calls through WorkEngine) -------------------------
    def attribute_tokens(self, spec: GradientSpec, context: RunContext) -> GradientResult:
        """The whole attribution on the least busy replica, which differentiates its own copy of the model."""
        results = self._gather(context, [("attribute", spec)])
        return results[0]

    def close(self) -> None:
        for replica in self.replicas:
            ray.kill(replica)  # type: ignore[arg-type]  # ray stub: `.remote()` may return the class itself

    # ---- chunks -------------------------------------------------------------------------
    def _chunks(self, work: Work) -> list[list[int]]:
        """Row indices in token order, cut into contiguous chunks spread over the replicas."""
        order = sorted(range(len(work.rows)), key=work.row_key)
        size = max(1, min(self.chunk_rows, -(-len(order) // len(self.replicas))))
        return [order[start : start + size] for start in range(0, len(order), size)]

    def run_work(self, work: Work, context: RunContext) -> list:
        chunks = self._chunks(work)
        results: list = [None] * len(work.rows)
        for chunk, chunk_results in zip(chunks, self._gather(context, [("run", work.subset(chunk)) for chunk in chunks])):
            for index, result in zip(chunk, chunk_results):
                results[index] = result
        return results

    def _submit(self, call_id: str, method: str, argument: object) -> tuple[ray.ObjectRef, int, object]:
        with self._lock:
            slot = min(range(len(self.replicas)), key=lambda s: self._busy[s])
            self._busy[slot] += 1
            replica = self.replicas[slot]
        return getattr(replica, method).remote(call_id, argument), slot, replica

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

    def _gather(self, context: RunContext, calls: list[tuple[str, object]]) -> list:
        """Run every (replica method, argument) call on the least busy replicas; results in order, costs charged once."""
        context.check()
        call_id = uuid.uuid4().hex
        results: list = [None] * len(calls)
        pending: dict = {}
        for number, (method, argument) in enumerate(calls):
            ref, slot, replica = self._submit(call_id, method, argument)
            pending[ref] = (number, slot, replica, 1)
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                if context.stopped():
                    raise Cancelled("explanation cancelled")
                for ref in ready:
                    number, slot, replica, attempt = pending.pop(ref)
                    try:
                        result, counts = ray.get(ref)
                    except RayActorError:
                        self._release(slot, done=False)
                        self._replace(slot, replica)
                        if attempt >= MAX_ATTEMPTS:
                            raise RuntimeError(f"a replica died {attempt} times running the same rows") from None
                        self.retried += 1
                        retry, new_slot, new_replica = self._submit(call_id, *calls[number])
                        pending[retry] = (number, new_slot, new_replica, attempt + 1)
                        continue
                    except RayTaskError as error:
                        self._release(slot, done=False)
                        raise error.as_instanceof_cause() from None
                    self._release(slot, done=True)
                    results[number] = result
                    context.stats.add(counts)
        except BaseException:
            self._stop(call_id, pending)
            raise
        return results

    def _stop(self, call_id: str, pending: dict) -> None:
        """Tell every replica to stop `call_id`; its unfinished chunks free their slots."""
        for _, slot, _, _ in pending.values():
            self._release(slot, done=False)
        for replica in list(self.replicas):
            replica.stop.remote(call_id)  # type: ignore[attr-defined]  # ray stub: see __init__
