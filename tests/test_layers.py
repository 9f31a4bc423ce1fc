"""The layer rule: proto builds on nothing of ours; server and client build on proto (and the engine); only the CLI composes."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "hierarchy": ("longshap.server", "longshap.client", "longshap.proto", "grpc"),
    "proto": ("longshap.server", "longshap.client", "longshap.hierarchy"),
    "server": ("longshap.client",),
    "client": ("longshap.server",),
}
COMPOSERS = {"client/cli.py"}
"""The command line is the top layer: it may run the server (`longshap serve`) and the engine (--local)."""


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions count too)."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def _files() -> list[Path]:
    return [p for layer in FORBIDDEN for p in sorted((ROOT / layer).rglob("*.py")) if "_pb2" not in p.name]


@pytest.mark.parametrize("path", _files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_respect_the_layers(path):
    relative = path.relative_to(ROOT).as_posix()
    if relative in COMPOSERS:
        return
    forbidden = FORBIDDEN[relative.split("/", 1)[0]]
    bad = sorted(m for m in imported_modules(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
    assert not bad, f"{relative} imports {bad}"


def test_the_checker_sees_lazy_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from longshap.server.app import main\n    import grpc.aio\n")
    assert {"longshap.server.app", "grpc.aio"} <= imported_modules(sample)
