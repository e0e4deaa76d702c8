"""Start shard servers as local processes (for launch scripts, benchmarks and tests)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
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
    """``num_shards`` shard server processes on loopback; a context manager.

    Their snapshots go under ``snapshot_root`` (default: a new temporary directory, kept);
    :meth:`connect` returns a client that passes paths under it.
    """

    def __init__(
        self,
        num_shards: int,
        extra_args: tuple[str, ...] = (),
        token_file: str | None = None,
        credentials=None,
        log_dir: str | None = None,
        snapshot_root: str | None = None,
    ):
        self.ports = [free_port() for _ in range(num_shards)]
        # Server output goes to files, never to a pipe nobody reads (a full pipe blocks
        # the server's logging, and with it every RPC).
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="hoststore-shards-")
        self.snapshot_root = os.path.abspath(
            snapshot_root or tempfile.mkdtemp(prefix="hoststore-snapshots-"))  # fmt: skip
        self.addresses = [f"127.0.0.1:{p}" for p in self.ports]
        args = [f"--snapshot_root={self.snapshot_root}", *extra_args]
        args += [f"--token_file={token_file}"] if token_file else []
        self._args, self._credentials = args, credentials
        self.procs = [self._start(i) for i in range(num_shards)]
        try:
            for a in self.addresses:
                wait_serving(a, credentials=credentials)
        except TimeoutError:
            self.stop()
            raise

    def _start(self, i: int) -> subprocess.Popen:
        with open(os.path.join(self.log_dir, f"shard-{i}.log"), "a") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "hoststore.server", f"--port={self.ports[i]}",
                 f"--shard_index={i}", f"--num_shards={len(self.ports)}", *self._args],
                stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

    def connect(self, **kwargs):
        """A :class:`~hoststore.rpc.ShardedStore` on these shards and their snapshot root."""
        from hoststore.rpc.client import ShardedStore

        return ShardedStore(self.addresses, snapshot_root=self.snapshot_root, **kwargs)

    def restart(self, i: int) -> None:
        """Starts shard ``i`` again (empty) on its address, e.g. after it was killed."""
        if self.procs[i].poll() is None:
            self.procs[i].kill()
        self.procs[i].wait(30)
        self.procs[i] = self._start(i)
        wait_serving(self.addresses[i], credentials=self._credentials)

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
