"""The retry policy: jittered delays around the server's pushback, exponential backoff without one, bounded attempts."""
from __future__ import annotations

import random

import grpc
import pytest
from longshap.client.retry import Deadline, RetryPolicy, pushback_s
from longshap.proto.wire import PUSHBACK_KEY


class _Refused(grpc.RpcError):
    def __init__(self, code=grpc.StatusCode.RESOURCE_EXHAUSTED, trailing=()):
        self._code, self._trailing = code, trailing

    def code(self):
        return self._code

    def trailing_metadata(self):
        return self._trailing


def test_delays_jitter_around_the_pushback_so_clients_do_not_return_in_step():
    policy = RetryPolicy(rng=random.Random(0))
    error = _Refused(trailing=((PUSHBACK_KEY, "2000"),))
    delays = [policy.delay(1, error) for _ in range(200)]
    assert all(1.0 <= d <= 3.0 for d in delays) and max(delays) - min(delays) > 1.5
    assert pushback_s(error) == 2.0


def test_without_pushback_the_backoff_grows_with_full_jitter_up_to_the_cap():
    policy = RetryPolicy(initial_s=0.1, max_s=1.0, rng=random.Random(0))
    assert all(0 <= policy.delay(1, _Refused()) <= 0.1 for _ in range(50))
    assert max(policy.delay(6, _Refused()) for _ in range(200)) > 0.5
    assert all(policy.delay(6, _Refused()) <= 1.0 for _ in range(200))


def test_only_a_busy_server_is_retried_and_attempts_are_bounded():
    policy = RetryPolicy(attempts=3)
    assert policy.delay(1, _Refused(grpc.StatusCode.INVALID_ARGUMENT)) is None
    assert policy.delay(2, _Refused()) is not None and policy.delay(3, _Refused()) is None
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)


def test_a_deadline_bounds_the_waiting():
    assert Deadline(None).allows(1e9) and Deadline(None).left() is None
    deadline = Deadline(1.0)
    assert deadline.allows(0.5) and not deadline.allows(5.0)
