"""Model work off the event loop: one thread per server, a bounded queue in front of it.

A model is neither thread-safe nor faster when shared, so one thread runs every job;
`submit` refuses at once when the queue is full, so callers get RESOURCE_EXHAUSTED
instead of waiting without bound.
"""
from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class QueueFull(Exception):
    """The worker is busy and `queue_size` requests already wait for it."""


class Worker:
    """Runs jobs on `threads` dedicated threads (one by default), with at most `queue_size` waiting.

    More than one thread only pays when the model work of concurrent jobs is merged
    or spread out (server.batching, server.ray_backend).
    """

    def __init__(self, queue_size: int, threads: int = 1) -> None:
        self.queue_size = queue_size
        self.threads = threads
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="longshap-worker")
        self._lock = threading.Lock()
        self._pending = 0

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    def submit(self, job: Callable[[], None]) -> Future:
        with self._lock:
            if self._pending >= self.threads + self.queue_size:
                raise QueueFull(f"the worker is busy and {self.queue_size} request(s) already wait; retry later")
            self._pending += 1
        future = self._executor.submit(job)
        future.add_done_callback(self._release)
        return future

    def _release(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        """Drop waiting jobs; a running one stops through its own should_stop."""
        self._executor.shutdown(wait=False, cancel_futures=True)
