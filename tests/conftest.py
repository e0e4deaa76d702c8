"""Real shard server processes on loopback, started once per module that asks for them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, timeout: float = 60.0, creds=None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ch = grpc.secure_channel(address, creds) if creds else grpc.insecure_channel(address)
        try:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
            if resp.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            time.sleep(0.1)
        finally:
            ch.close()
    raise TimeoutError(f"shard at {address} did not start")


class Cluster:
    def __init__(self, num_shards: int, extra_args=(), token: str | None = None, tmp=None,
                 creds=None):  # fmt: skip
        self.ports = [free_port() for _ in range(num_shards)]
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        self.token = token
        args = list(extra_args)
        if token:
            path = os.path.join(tmp, "token")
            with open(path, "w") as f:
                f.write(token + "\n")
            args += [f"--token_file={path}"]
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "hoststore.server", f"--port={p}", f"--shard_index={i}",
                 f"--num_shards={num_shards}", *args],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            for i, p in enumerate(self.ports)
        ]  # fmt: skip
        for a in self.addresses:
            wait_serving(a, creds=creds)

    def stop(self, sig=None):
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(sig) if sig else p.kill()
        for p in self.procs:
            p.wait(30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(2, token="s3cret", tmp=str(tmp_path_factory.mktemp("cluster")))
    yield c
    c.stop()
