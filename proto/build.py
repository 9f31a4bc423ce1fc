"""Regenerate the gRPC Python modules from proto/longshap/v1/*.proto (never edit the output).

The output is committed (proto/explainer_pb2*.py), so `pip install .` needs no code
generation; tests/proto/test_generated.py fails when it is stale. Run after editing the
.proto:  python proto/build.py
"""
from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
SOURCES = sorted(p.relative_to(PROTO_ROOT).as_posix() for p in (PROTO_ROOT / "longshap").rglob("*.proto"))
PACKAGE = "longshap.proto"


def compile_protos(output: Path, extra_args: tuple[str, ...] = ()) -> None:
    """Run protoc (from grpcio-tools) on SOURCES with their include path, writing into `output`."""
    import grpc_tools
    from grpc_tools import protoc

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", *extra_args, *SOURCES]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {SOURCES}")


def build(destination: Path = PROTO_ROOT) -> list[Path]:
    """Generate messages, stubs and type stubs flat into `destination`, importable as longshap.proto.*."""
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch)
        compile_protos(out, (f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"))
        for generated in sorted(out.rglob("*_pb2*.py*")):
            text = generated.read_text()
            # protoc imports siblings by their .proto path (longshap.v1.x); they live in longshap.proto.
            text = re.sub(r"^from longshap\.v1 import ", f"from {PACKAGE} import ", text, flags=re.MULTILINE)
            target = destination / generated.name
            target.write_text(text)
            written.append(target)
    return written


if __name__ == "__main__":
    for path in build():
        print(f"wrote {path.relative_to(PROTO_ROOT.parent)}", file=sys.stderr)
    shutil.rmtree(PROTO_ROOT / "gen", ignore_errors=True)
