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


THIRD_PARTY_PRIVATE = {
    "config._attn_implementation": "transformers' resolved attention kernel; no public accessor on every supported release",
    "os._exit": "the documented way to exit without waiting for a stuck worker thread",
    "ray._private": "Ray's switch for single-machine clusters (ray_constants), so a local cluster binds 127.0.0.1 only",
}
"""Private names of other libraries that the code reads on purpose, with the reason."""


def private_reaches(path: Path) -> list[str]:
    """`obj._name` on anything but self/cls, and `from longshap... import _name`: reaching into another module's privates."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                expression = ast.unparse(node)
                if expression not in THIRD_PARTY_PRIVATE:
                    found.append(f"line {node.lineno}: {expression}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("longshap"):
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names if a.name.startswith("_")]
    return found


def _product_and_bench_files() -> list[Path]:
    return _files() + sorted((ROOT / "bench").rglob("*.py"))


@pytest.mark.parametrize("path", _product_and_bench_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_reaches_into_another_modules_private_names(path):
    assert not private_reaches(path), f"{path.relative_to(ROOT)} uses private names of other modules: {private_reaches(path)}"


def test_the_private_name_checker_sees_attributes_and_imports(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from longshap.hierarchy.scorer import _helper\nclass A:\n    def f(self, other):\n        return self._mine, other._theirs\n")
    assert private_reaches(sample) == ["line 1: from longshap.hierarchy.scorer import _helper", "line 4: other._theirs"]
