"""Regenerates the committed gRPC stubs: ``python -m hoststore.rpc.proto.regenerate``.

Needs grpcio-tools (the [dev] extra). A test checks that running it changes nothing.
"""

from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def generate(out_dir: str = ROOT) -> None:
    from grpc_tools import protoc

    args = ["protoc", f"-I{ROOT}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
            os.path.join(ROOT, "hoststore", "rpc", "proto", "store.proto")]  # fmt: skip
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")


if __name__ == "__main__":
    generate(sys.argv[1] if len(sys.argv) > 1 else ROOT)
