"""Start shard servers as local processes (for launch scripts, benchmarks and tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, timeout: float = 60.0, credentials=None) -> None:
    """Blocks until the shard's health service answers SERVING."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if credentials is not None:
            ch = grpc.secure_channel(address, credentials)
        else:
            ch = grpc.insecure_channel(address)
        try:
            req = health_pb2.HealthCheckRequest()
            if health_pb2_grpc.HealthStub(ch).Check(req, timeout=1).status == 1:
                return
        except grpc.RpcError:
            time.sleep(0.1)
        finally:
            ch.close()
    raise TimeoutError(f"shard at {address} did not become SERVING within {timeout}s")


class LocalCluster:
    """``num_shards`` shard server processes on loopback; a context manager."""

    def __init__(
        self,
        num_shards: int,
        extra_args: tuple[str, ...] = (),
        token_file: str | None = None,
        credentials=None,
        log_dir: str | None = None,
    ):
        self.ports = [free_port() for _ in range(num_shards)]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        args = list(extra_args) + ([f"--token_file={token_file}"] if token_file else [])
        self.procs = []
        for i, port in enumerate(self.ports):
            out = open(os.path.join(log_dir, f"shard-{i}.log"), "w") if log_dir else None
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "hoststore.server", f"--port={port}",
                 f"--shard_index={i}", f"--num_shards={num_shards}", *args],
                stdout=out or subprocess.DEVNULL, stderr=out or subprocess.PIPE,
            ))  # fmt: skip
        try:
            for a in self.addresses:
                wait_serving(a, credentials=credentials)
        except TimeoutError:
            self.stop()
            raise

    def stop(self, sig=None) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig) if sig else p.kill()
        for p in self.procs:
            p.wait(30)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
