"""Model work off the event loop: one thread per server, a bounded queue in front of it.

A model is neither thread-safe nor faster when shared, so one thread runs every job;
`submit` refuses at once when the queue is full, so callers get RESOURCE_EXHAUSTED
instead of waiting without bound. A job cancelled while it waits gives its slot back
at once. After each job the C heap is trimmed: activations of a large request are
freed by torch but kept by malloc, so without it the resident size stays at the
largest request's high-water mark.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable


class QueueFull(Exception):
    """The worker is busy and `queue_size` requests already wait for it."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        """About when a slot frees: a typical job's time over the threads running jobs."""


TYPICAL_WEIGHT = 0.2
"""Weight of the latest job in the running average of job times (what a refused caller is told to wait)."""
RETRY_AFTER_S = (0.05, 30.0)


def _heap_trimmer() -> Callable[[], None]:
    """glibc's malloc_trim(0), which returns freed heap pages to the system; a no-op elsewhere."""
    name = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    return (lambda: trim(0)) if trim is not None else (lambda: None)


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
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._trim = _heap_trimmer()
        self.typical_seconds = 1.0
        """Running average of how long a job takes."""

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    def submit(self, job: Callable[[], None]) -> Future:
        """Queue `job`; cancelling the returned future before it starts frees its slot at once."""
        with self._lock:
            if self._pending >= self.threads + self.queue_size:
                low, high = RETRY_AFTER_S
                retry_after = min(high, max(low, self.typical_seconds / self.threads))
                raise QueueFull(f"the worker is busy and {self.queue_size} request(s) already wait; retry in about {retry_after:.1f} s", retry_after)
            self._pending += 1
        future = self._executor.submit(self._run, job)
        future.add_done_callback(self._release)
        return future

    def _run(self, job: Callable[[], None]) -> None:
        started = time.monotonic()
        try:
            job()
        finally:
            self._trim()
            with self._lock:
                self.typical_seconds += TYPICAL_WEIGHT * (time.monotonic() - started - self.typical_seconds)

    def _release(self, _: Future) -> None:
        with self._lock:
            self._pending -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no job runs or waits; False if one still does after `timeout` seconds."""
        with self._lock:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def shutdown(self) -> None:
        """Drop waiting jobs; a running one stops through its own should_stop."""
        self._executor.shutdown(wait=False, cancel_futures=True)
