"""Starting a local Ray cluster: a raylet that misses Ray's start window gets one more try, other errors none."""
from __future__ import annotations

import pytest

ray_backend = pytest.importorskip("longshap.server.ray_backend")

TIMEOUT = "The current node timed out during startup. This could happen because some of the raylet failed to startup."


@pytest.fixture
def fake_ray(monkeypatch):
    """ray.init failing with the errors queued in `errors` (then succeeding); every call recorded."""
    calls: list[str] = []
    errors: list[Exception] = []

    def init(**_):
        calls.append("init")
        if errors:
            raise errors.pop(0)

    monkeypatch.setattr(ray_backend.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_backend.ray, "init", init)
    monkeypatch.setattr(ray_backend.ray, "shutdown", lambda: calls.append("shutdown"))
    return calls, errors


def test_a_local_cluster_that_misses_its_start_window_is_started_again(fake_ray, caplog):
    calls, errors = fake_ray
    errors.append(Exception(TIMEOUT))
    try:
        assert ray_backend.connect(num_cpus=1)
    finally:
        ray_backend.disconnect()
    assert calls == ["init", "shutdown", "init", "shutdown"]  # the failed start cleaned up, then the final disconnect
    assert any("starting it again" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("error", [Exception(TIMEOUT), ValueError("num_cpus must be positive")])
def test_other_errors_and_a_second_timeout_are_raised(fake_ray, error):
    calls, errors = fake_ray
    errors.extend([Exception(TIMEOUT), error] if "timed out" in str(error) else [error])
    try:
        with pytest.raises(type(error), match=str(error)[:20]):
            ray_backend.connect(num_cpus=1)
    finally:
        ray_backend.disconnect()
    assert calls.count("init") == (2 if "timed out" in str(error) else 1)
