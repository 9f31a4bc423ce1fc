"""Continuous batching as an engine: the model calls of concurrent requests merged into shared calls.

`BatchingEngine` implements the engine protocol (`hierarchy.engines.base.Engine`) in
front of another engine (the process's transformers engine, or Ray replicas). Calls
of concurrent requests that arrive while the inner engine is busy, or within a short
window, are merged into one inner call; its results go back to each caller and its
costs are shared out in proportion to each caller's tokens, added to that caller's
own run context.

Merging changes only how rows are grouped into passes, so each request's values are
those it would get alone (up to float noise from different batch shapes). The
merged calls keep their prefix states in the batcher's own cache scope, shared by
the requests it serves; their token counts are shares of merged passes.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field


from longshap.hierarchy.explainer import Explainer
from longshap.hierarchy.engines.base import POLL_S, CacheScope, Engine, RunContext
from longshap.hierarchy.engines.gradient_spec import GradientResult, GradientSpec
from longshap.hierarchy.engines.planning import split_counts
from longshap.hierarchy.engines.work import Work, WorkEngine
from longshap.hierarchy.errors import Cancelled



@dataclass(eq=False)
class _Job:
    work: Work
    context: RunContext
    done: threading.Event = field(default_factory=threading.Event)
    results: list | None = None
    counts: dict = field(default_factory=dict)
    error: BaseException | None = None

    def finish(self, results: list | None = None, counts: dict | None = None, error: BaseException | None = None) -> None:
        self.results, self.counts, self.error = results, counts or {}, error
        self.done.set()


class BatchingEngine(WorkEngine):
    """Merges the calls of concurrent requests into shared calls of `inner`.

    One dispatcher thread takes every call queued while the inner engine was busy.
    When requests served by the previous merged call have not come back yet (they are
    between two calls of their estimator), it waits up to `window_s` for them, so
    requests in lock step keep sharing passes; a lone request never waits.
    """

    def __init__(self, inner: Engine, window_s: float = 0.01, max_rows: int = 512) -> None:
        super().__init__(inner)
        self.window_s = window_s
        self.max_rows = max_rows
        self.scope = CacheScope()
        """Prefix states of the merged calls, shared by the requests this batcher serves."""
        self.merged_calls = 0
        """Inner calls that carried the work of more than one request's call."""
        self._queue: list[_Job] = []
        self._returning: set[int] = set()
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._dispatch, name="longshap-batcher", daemon=True)
        self._thread.start()

    # ---- the engine protocol (text and calls through WorkEngine) -------------------------
    def attribute_tokens(self, spec: GradientSpec, context: RunContext) -> GradientResult:
        """Not merged (one prompt, many interpolation points): the inner engine runs it between merged calls."""
        return self.front.attribute_tokens(spec, context)

    def close(self) -> None:
        """Stop the dispatcher; queued calls fail with Cancelled. The inner engine stays the caller's."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=5)

    # ---- merging ------------------------------------------------------------------------
    def run_work(self, work: Work, context: RunContext) -> list:
        context.check()
        job = _Job(work, context)
        with self._changed:
            if self._closed:
                raise Cancelled("the server is shutting down")
            self._queue.append(job)
            self._changed.notify_all()
        while not job.done.wait(POLL_S):
            if context.stopped():
                raise Cancelled("explanation cancelled")  # the merged call goes on for the others
        if job.error is not None:
            raise job.error
        assert job.results is not None, "a job finishes with results or an error"
        context.stats.add(job.counts)
        return job.results

    def _take(self) -> list[_Job] | None:
        """Wait for work, then for callers of the last merged call (up to the window); take the queue."""
        with self._changed:
            self._changed.wait_for(lambda: self._queue or self._closed)
            if self._closed:
                for job in self._queue:
                    job.finish(error=Cancelled("the server is shutting down"))
                return None
            deadline = time.monotonic() + self.window_s

            def waiting_for_more() -> bool:
                queued = {id(job.context) for job in self._queue}
                rows = sum(len(job.work.rows) for job in self._queue)
                return bool(self._returning - queued) and rows < self.max_rows and not self._closed

            while waiting_for_more() and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            jobs, self._queue = self._queue, []
            return jobs

    def _dispatch(self) -> None:
        while (jobs := self._take()) is not None:
            groups: dict[object, list[_Job]] = {}
            for job in jobs:
                if job.context.stopped():
                    job.finish(error=Cancelled("explanation cancelled"))
                    continue
                key = job.work.merge_key()
                groups.setdefault(key if key is not None else id(job), []).append(job)
            for group in groups.values():
                self._run_group(group)
            callers = {id(job.context) for job in jobs}
            self._returning = callers if len(callers) > 1 else set()

    def _run_group(self, group: list[_Job]) -> None:
        merged = group[0].work.merged([job.work for job in group[1:]])
        context = RunContext(lambda: all(job.context.stopped() for job in group), cache=self.scope)
        try:
            results = merged.run(self.front, context)
        except BaseException as error:  # noqa: BLE001 - every caller of the merged call gets the failure
            for job in group:
                job.finish(error=error)
            return
        if len(group) > 1:
            self.merged_calls += 1
        counts = {name: value for name, value in context.stats.as_dict().items() if value}
        shares = split_counts(counts, [sum(job.work.row_tokens()) for job in group])
        start = 0
        for job, share in zip(group, shares):
            job.finish(results[start : start + len(job.work.rows)], share)
            start += len(job.work.rows)


def serving_explainers(
    explainers: Mapping[str, Explainer], engines: Mapping[str, Engine], concurrency: int, batching: bool,
    max_level_budget: int | None = None, max_players: int | None = None,
) -> tuple[dict[str, Explainer], list[BatchingEngine]]:
    """Per model, the explainer its requests share, and the batchers started for them (the server closes those).

    A model runs on its given engine (Ray replicas) or its explainer's own, behind a
    batcher when requests run concurrently and batching is on; no level plans more
    than `max_level_budget` evaluations, the estimators' defaults included, and no game
    has more than `max_players` units.
    """
    unknown = set(engines) - set(explainers)
    if unknown:
        raise ValueError(f"backends: no model named {sorted(unknown)}")
    served: dict[str, Explainer] = {}
    owned: list[BatchingEngine] = []
    for name, explainer in explainers.items():
        engine = engines.get(name, explainer.engine)
        if batching and concurrency > 1:
            engine = BatchingEngine(engine)
            owned.append(engine)
        served[name] = Explainer(engine, explainer.cache_scope, max_level_budget, max_players)
    return served, owned
