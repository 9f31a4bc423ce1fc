"""Generate the gRPC Python modules from proto/ (run by `make install`; never edit the output).

The modules go to proto/gen/ (git-ignored) as the package `longshap.v1`, which
`client.rpc` puts on the import path.
"""
from __future__ import annotations

import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
OUTPUT = PROTO_ROOT / "gen"


def build() -> Path:
    """Compile every .proto under proto/longshap into OUTPUT and return OUTPUT."""
    from grpc_tools import protoc
    import grpc_tools

    include = Path(grpc_tools.__file__).resolve().parent / "_proto"
    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / "longshap").rglob("*.proto"))
    OUTPUT.mkdir(exist_ok=True)
    args = ["grpc_tools.protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={OUTPUT}", f"--pyi_out={OUTPUT}", f"--grpc_python_out={OUTPUT}", *sources]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {sources}")
    for package in {OUTPUT / Path(s).parent for s in sources} | {OUTPUT / "longshap"}:
        (package / "__init__.py").touch()
    return OUTPUT


if __name__ == "__main__":
    print(f"generated gRPC modules in {build()}", file=sys.stderr)
