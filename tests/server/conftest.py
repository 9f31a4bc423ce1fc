import pytest
from serving import stub, tiny_server  # noqa: F401  (fixtures)


@pytest.fixture(scope="session")
def ray_engine(tiny_llama_dir):
    """Two tiny-model replicas on a local Ray cluster (3 CPUs: room to replace one), shut down at the end."""
    pytest.importorskip("ray")
    from longshap.hierarchy import Explainer
    from longshap.server.ray_backend import RayEngine, connect, disconnect

    assert connect(num_cpus=3), "Ray was already initialised by something else"
    try:
        front = Explainer.from_pretrained(str(tiny_llama_dir), weights=False).engine  # as `longshap serve --ray`: tokenises only
        engine = RayEngine(front, str(tiny_llama_dir), replicas=2, chunk_rows=8)
        yield engine
        engine.close()
    finally:
        disconnect()
