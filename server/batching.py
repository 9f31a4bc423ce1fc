"""One model shared by concurrent requests, with their rows merged into the same forward passes.

The engine talks to a scorer (`hierarchy.scorer.ModelScorer`). A server running
several requests at once gives each request a `RequestScorer`: the same interface,
with tokenisation done locally and per-request stats and `should_stop`, while the
model work goes, as token-level `Work`, to a shared executor:

- a `LocalBackend`: the process's own model, one call at a time (a lock);
- a `Batcher` in front of a backend (continuous batching): calls of concurrent
  requests that arrive while the model is busy, or within a short window, are merged
  into one backend call, whose results and stats are split back per request;
- `server.ray_backend.RayBackend`: model replicas as Ray actors.

Merging changes only how rows are grouped into passes, so each request's values are
those it would get alone (up to float noise from different batch shapes).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from longshap.hierarchy.errors import Cancelled
from longshap.hierarchy.scorer import ModelScorer, ScorerStats, check_continuations
from longshap.hierarchy.speculative import AnswerTree

StopCheck = Callable[[], bool]
POLL_S = 0.05
"""How often a caller waiting for the model checks its own should_stop."""


@dataclass
class Work:
    """The token-level model work of one scorer call (see ModelScorer.score_rows and greedy_ids)."""

    kind: str
    """"score": rows are (prompt ids, continuations); "tokens": rows are (prompt ids, one continuation), scored
    per token; "greedy": rows are prompt ids."""
    rows: list
    max_new_tokens: int = 0
    tree: AnswerTree | None = None

    def merge_key(self) -> tuple | None:
        """Works with equal keys can share passes; an answer tree belongs to one request, so never."""
        if self.tree is not None:
            return None
        return (self.kind, self.max_new_tokens)

    def row_tokens(self) -> list[int]:
        """Tokens per row: how merged passes' costs are shared out."""
        if self.kind == "score":
            return [len(prompt) * max(1, len(continuations)) + sum(map(len, continuations)) for prompt, continuations in self.rows]
        if self.kind == "tokens":
            return [len(prompt) + len(continuation) for prompt, continuation in self.rows]
        return [len(row) for row in self.rows]


def run_on_scorer(scorer: ModelScorer, work: Work) -> list:
    """Do `work` on a local model; the only place that knows the work kinds."""
    if work.kind == "score":
        return scorer.score_rows(work.rows)
    if work.kind == "tokens":
        return scorer.token_logprob_rows(work.rows)
    if work.kind == "greedy":
        return scorer.greedy_ids(work.rows, work.max_new_tokens, work.tree)
    raise ValueError(f"work kind: unknown {work.kind!r}")


def stats_delta(before: dict, after: dict) -> dict:
    return {name: after[name] - before[name] for name in after if after[name] != before.get(name, 0)}


class Executor(Protocol):
    """Runs Work for a request: returns one result per row and the model stats it cost.

    `close` releases what the executor itself started (a batcher its thread, a Ray
    backend its replicas), not what it was given.
    """

    def run(self, work: Work, should_stop: StopCheck, caller: object = None) -> tuple[list, dict]: ...

    def close(self) -> None: ...


class LocalBackend:
    """The process's own model, one call at a time; a caller waiting for it still honours should_stop."""

    def __init__(self, scorer: ModelScorer) -> None:
        self.scorer = scorer
        self._lock = threading.Lock()

    def run(self, work: Work, should_stop: StopCheck, caller: object = None) -> tuple[list, dict]:
        while not self._lock.acquire(timeout=POLL_S):
            if should_stop():
                raise Cancelled("cancelled while waiting for the model")
        try:
            self.scorer.should_stop = should_stop
            before = self.scorer.stats.as_dict()
            results = run_on_scorer(self.scorer, work)
            return results, stats_delta(before, self.scorer.stats.as_dict())
        finally:
            self.scorer.should_stop = None
            self._lock.release()

    def close(self) -> None:
        pass


@dataclass(eq=False)
class _Job:
    work: Work
    should_stop: StopCheck
    caller: object
    done: threading.Event = field(default_factory=threading.Event)
    results: list | None = None
    stats: dict = field(default_factory=dict)
    error: BaseException | None = None

    def finish(self, results: list | None = None, stats: dict | None = None, error: BaseException | None = None) -> None:
        self.results, self.stats, self.error = results, stats or {}, error
        self.done.set()


class Batcher:
    """Continuous batching: merges the scorer calls of concurrent requests into shared backend calls.

    One dispatcher thread takes every call queued while the backend was busy. When
    callers served by the previous merged call have not come back yet (they are
    between two calls of their estimator), it waits up to `window_s` for them, so
    requests in lock step keep sharing passes; a lone request never waits.
    """

    def __init__(self, backend: Executor, window_s: float = 0.01, max_rows: int = 512) -> None:
        self.backend = backend
        self.window_s = window_s
        self.max_rows = max_rows
        self.merged_calls = 0
        """Backend calls that carried the work of more than one scorer call."""
        self._queue: list[_Job] = []
        self._returning: set[int] = set()
        self._closed = False
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._dispatch, name="longshap-batcher", daemon=True)
        self._thread.start()

    def run(self, work: Work, should_stop: StopCheck, caller: object = None) -> tuple[list, dict]:
        job = _Job(work, should_stop, caller)
        with self._changed:
            if self._closed:
                raise Cancelled("the server is shutting down")
            self._queue.append(job)
            self._changed.notify_all()
        while not job.done.wait(POLL_S):
            if should_stop():
                raise Cancelled("explanation cancelled")  # the merged call goes on for the others
        if job.error is not None:
            raise job.error
        assert job.results is not None, "a job finishes with results or an error"
        return job.results, job.stats

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._thread.join(timeout=5)

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
                queued = {id(job.caller) for job in self._queue}
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
                if job.should_stop():
                    job.finish(error=Cancelled("explanation cancelled"))
                    continue
                key = job.work.merge_key()
                groups.setdefault(key if key is not None else id(job), []).append(job)
            for group in groups.values():
                self._run_group(group)
            callers = {id(job.caller) for job in jobs}
            self._returning = callers if len(callers) > 1 else set()

    def _run_group(self, group: list[_Job]) -> None:
        first = group[0].work
        merged = Work(first.kind, [row for job in group for row in job.work.rows], first.max_new_tokens, first.tree)
        try:
            results, stats = self.backend.run(merged, lambda: all(job.should_stop() for job in group))
        except BaseException as error:  # noqa: BLE001 - every caller of the merged call gets the failure
            for job in group:
                job.finish(error=error)
            return
        if len(group) > 1:
            self.merged_calls += 1
        shares = split_stats(stats, [sum(job.work.row_tokens()) for job in group])
        start = 0
        for job, share in zip(group, shares):
            job.finish(results[start : start + len(job.work.rows)], share)
            start += len(job.work.rows)


def split_stats(stats: dict, weights: Sequence[int]) -> list[dict]:
    """Share each counter of a merged call out in proportion to `weights`, in whole units that add up exactly."""
    shares: list[dict] = [{} for _ in weights]
    total = sum(weights)
    fractions = np.array(weights, dtype=float) / total if total else np.full(len(weights), 1 / len(weights))
    for name, value in stats.items():
        exact = value * fractions
        whole = np.floor(exact).astype(int)
        for index in np.argsort(-(exact - whole), kind="stable")[: int(value - whole.sum())]:
            whole[index] += 1
        for share, amount in zip(shares, whole):
            share[name] = int(amount)
    return shares


class RequestScorer:
    """One request's scorer: the ModelScorer interface the engine uses, with the model work sent to an executor."""

    def __init__(self, model: ModelScorer, executor: Executor) -> None:
        self.model = model
        """Used for tokenisation only; its forward passes belong to the executor."""
        self.tokenizer = model.tokenizer
        self.executor = executor
        self.stats = ScorerStats()
        self.should_stop: StopCheck | None = None

    def encode_prompt(self, prompt: str) -> list[int]:
        return self.model.encode_prompt(prompt)

    def continuation_ids(self, prompt: str, continuation: str) -> list[int]:
        return self.model.continuation_ids(prompt, continuation)

    def decode(self, tokens: Sequence[int]) -> str:
        return self.model.decode(tokens)

    def continuation_logprobs(self, prompts: Sequence[str], continuations: Sequence[Sequence[int]]) -> np.ndarray:
        check_continuations(continuations)
        continuations = [list(c) for c in continuations]
        results = self._run(Work("score", [(self.encode_prompt(p), continuations) for p in prompts]))
        self.stats.evaluations += len(prompts)
        return np.array(results).reshape(len(prompts), len(continuations))

    def continuation_token_logprobs(self, prompts: Sequence[str], continuation: Sequence[int]) -> np.ndarray:
        check_continuations([continuation])
        results = self._run(Work("tokens", [(self.encode_prompt(p), list(continuation)) for p in prompts]))
        self.stats.evaluations += len(prompts)
        return np.vstack(results)

    def new_request(self) -> None:
        """The shared model's prefix cache serves every concurrent request; its values are exact either way."""

    def greedy(self, prompts: Sequence[str], max_new_tokens: int = 20, tree: AnswerTree | None = None) -> list[list[int]]:
        answers = self._run(Work("greedy", [self.encode_prompt(p) for p in prompts], max_new_tokens, tree))
        self.stats.evaluations += len(prompts)
        return answers

    def _run(self, work: Work) -> list:
        should_stop = self.should_stop or (lambda: False)
        if should_stop():
            raise Cancelled("explanation cancelled")
        results, stats = self.executor.run(work, should_stop, self)
        for name, value in stats.items():
            setattr(self.stats, name, getattr(self.stats, name) + value)
        return results


def build_executors(explainers: Mapping, backends: Mapping[str, Executor], concurrency: int, batching: bool) -> dict[str, Executor]:
    """Per model: its backend (the given one, or its local model when requests run concurrently), batched if asked.

    One request at a time on a local model needs none: the explainer's own scorer is used.
    """
    executors: dict[str, Executor] = {}
    for name, explainer in explainers.items():
        backend = backends.get(name)
        if backend is None and concurrency > 1:
            backend = LocalBackend(explainer.scorer)
        if backend is not None:
            executors[name] = Batcher(backend) if batching and concurrency > 1 else backend
    unknown = set(backends) - set(explainers)
    if unknown:
        raise ValueError(f"backends: no model named {sorted(unknown)}")
    return executors
