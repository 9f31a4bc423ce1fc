"""The package as users install it: sdist and wheel built from a clean source, installed into a fresh venv.

The fresh venv borrows this environment's third-party packages through a .pth line (so
the test needs no downloads), but not our editable install: it imports only the wheel.
"""
from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    source = tmp_path_factory.mktemp("source") / "longshap"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "reports", ".pytest_cache"))
    # The default `python -m build` makes the sdist, then the wheel from the unpacked sdist, so a file
    # missing from the sdist breaks the wheel too.
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)], check=True, capture_output=True, timeout=300)
    return out


@pytest.fixture(scope="module")
def fresh_venv(dist, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    (wheel,) = dist.glob("*.whl")
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", str(wheel)], check=True, timeout=300)
    fresh_site = Path(subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True).strip())
    (fresh_site / "borrowed_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_the_wheel_installs_only_the_longshap_namespace_with_its_grpc_code(dist):
    (wheel,) = dist.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/", 1)[0] for n in names} == {"longshap", "longshap-0.1.0.dist-info"}
    for module in ("longshap/proto/explainer_pb2.py", "longshap/proto/explainer_pb2_grpc.py", "longshap/proto/longshap/v1/explainer.proto",
                   "longshap/hierarchy/explainer.py", "longshap/server/app.py", "longshap/client/cli.py"):
        assert module in names
    assert not any("/tests/" in n or n.startswith("tests/") for n in names)


def test_the_sdist_carries_the_sources(dist):
    (sdist,) = dist.glob("*.tar.gz")
    names = tarfile.open(sdist).getnames()
    assert any(n.endswith("proto/longshap/v1/explainer.proto") for n in names)
    assert any(n.endswith("proto/explainer_pb2.py") for n in names)


def _run(venv: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([*args], cwd=venv, capture_output=True, text=True, timeout=timeout, env=env, check=True)


def test_the_installed_library_imports_from_the_wheel(fresh_venv):
    code = (
        "import longshap.hierarchy, sys; from longshap.hierarchy import Explainer, estimate; "
        "print(longshap.hierarchy.__file__); print('torch' in sys.modules)"
    )
    where, torch_loaded = _run(fresh_venv, str(fresh_venv / "bin" / "python"), "-c", code).stdout.split()
    assert where.startswith(str(fresh_venv)) and torch_loaded == "False"


def test_the_installed_cli_answers_help_and_lists_a_served_model(fresh_venv, tiny_llama_dir):
    longshap = str(fresh_venv / "bin" / "longshap")
    assert "explain" in _run(fresh_venv, longshap, "--help").stdout
    server = subprocess.Popen([longshap, "serve", "--model", f"tiny={tiny_llama_dir}", "--port", "0", "--grace", "0"],
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = None
        for line in server.stderr:
            if line.startswith("{") and json.loads(line)["message"] == "listening":
                port = json.loads(line)["port"]
                break
        assert port, "the installed server never listened"
        listing = _run(fresh_venv, longshap, "models", "--server", f"127.0.0.1:{port}").stdout
        assert listing.startswith("tiny (default)  llama")
    finally:
        server.terminate()
        server.wait(timeout=30)
