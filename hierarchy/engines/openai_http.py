"""JSON over HTTP to an OpenAI-compatible server: bearer key, per-call deadline, retries with backoff on 429, 5xx and refused connections.

Standard library only, so the openai engine adds no dependency. A call never outlives
its run's deadline: each attempt's timeout is what is left of it, and a run that
should stop gives up before the next attempt or backoff.
"""
from __future__ import annotations

import json
import random
import time
import urllib.error
import urllib.request
from typing import Any

from longshap.hierarchy.engines.base import RunContext
from longshap.hierarchy.errors import Cancelled

RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})


class ServerError(RuntimeError):
    """The server answered with an error that retrying will not fix (or the retries ran out)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class JsonClient:
    """POST/GET JSON to one server root, retrying what a busy or restarting server answers."""

    def __init__(self, root: str, api_key: str | None = None, timeout_s: float = 300.0, retries: int = 4, backoff_s: float = 0.5) -> None:
        self.root = root.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s

    def post(self, path: str, body: dict, context: RunContext | None = None, retries: int | None = None) -> Any:
        return self._call("POST", path, body, context, self.retries if retries is None else retries)

    def get(self, path: str, context: RunContext | None = None) -> Any:
        return self._call("GET", path, None, context, self.retries)

    def _call(self, method: str, path: str, body: dict | None, context: RunContext | None, retries: int) -> Any:
        url = self.root + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        for attempt in range(retries + 1):
            timeout = self._time_left(context)
            request = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return json.loads(response.read() or b"null")
            except urllib.error.HTTPError as error:
                detail = _detail(error)
                if error.code not in RETRIED_STATUSES or attempt == retries:
                    raise ServerError(f"{method} {url}: HTTP {error.code}: {detail}", error.code) from None
                wait = _retry_after(error) or self.backoff_s * 2**attempt
            except TimeoutError:
                if context is not None and context.stopped():
                    raise Cancelled("cancelled while waiting for the server") from None
                # Sending it again would only queue the same work behind the unfinished copy.
                raise ServerError(f"{method} {url}: no answer within {timeout:.3g} s (timeout_s)") from None
            except (urllib.error.URLError, ConnectionError) as error:
                if context is not None and context.stopped():
                    raise Cancelled("cancelled while waiting for the server") from None
                if isinstance(getattr(error, "reason", None), TimeoutError):
                    raise ServerError(f"{method} {url}: no answer within {timeout:.3g} s (timeout_s)") from None
                if attempt == retries:
                    raise ServerError(f"{method} {url}: {getattr(error, 'reason', error)}") from None
                wait = self.backoff_s * 2**attempt
            self._sleep(wait * (1 + 0.25 * random.random()), context)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _time_left(self, context: RunContext | None) -> float:
        if context is None:
            return self.timeout_s
        context.check()
        if context.deadline is None:
            return self.timeout_s
        return max(0.001, min(self.timeout_s, context.deadline - time.monotonic()))

    def _sleep(self, seconds: float, context: RunContext | None) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if context is not None:
                context.check()
            time.sleep(min(left, 0.05))


def _detail(error: urllib.error.HTTPError) -> str:
    try:
        body = error.read().decode("utf-8", "replace")
    except OSError:
        return error.reason or ""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body[:300]
    message = parsed.get("error", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(message, dict):
        message = message.get("message") or message.get("detail") or message
    return str(message)[:300]


def _retry_after(error: urllib.error.HTTPError) -> float | None:
    value = error.headers.get("Retry-After") if error.headers else None
    try:
        return min(60.0, float(value)) if value is not None else None
    except ValueError:
        return None
