"""2 store shards x 2 trainer processes on loopback, dense parameters kept in sync by
jax.distributed (gloo): the way experiments/launch_local.py runs them, then resumed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from hoststore.rpc.launch import free_port
from jaxstream.distributed import Workers
from jaxstream.stream import PartitionSource, SourceConfig, key_time
from tests.conftest import REPO


def _launch(work, *train_flags, devices_per_worker=1):
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_worker}",
    }
    return subprocess.run(
        [sys.executable, "experiments/launch_local.py", "--num_shards=2", "--num_workers=2",
         f"--workdir={work}", "--", "--smoke", "--staleness=0", "--admission=count_filter:2",
         *train_flags],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip


@pytest.mark.timeout(700)
def test_two_shards_two_workers_then_resume(tmp_path):
    work = str(tmp_path / "run")
    first = _launch(work, "--max_partitions=2")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    # Fresh shard servers: worker 0 loads the store from the checkpoint, every worker
    # restores the dense state, and the stream continues at the third hour, now data
    # parallel on two devices in each worker (one global collective over all four).
    second = _launch(work, devices_per_worker=2)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "resumed from checkpoint 2 after partition 20260101/01" in second.stdout
    lines = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))]
    # Worker 0 alone writes the metrics: one line per partition, over both workers' examples.
    assert [x["partition"] for x in lines] == ["20260101/00", "20260101/01", "20260101/02"]
    assert all(x["examples"] == 2000 for x in lines)
    assert lines[-1]["progressive_auc"] > lines[0]["progressive_auc"]
    workers = [json.load(open(os.path.join(work, f"worker-{i}.json"))) for i in range(2)]
    # The dense parameters stayed identical on both workers; metrics merged exactly.
    assert workers[0]["params_sha256"] == workers[1]["params_sha256"]
    assert workers[0]["cumulative_auc"] == workers[1]["cumulative_auc"]
    assert workers[0]["partitions"] == 3 and workers[0]["table_rows"] == lines[-1]["table_rows"]
    assert [x["devices"] for x in lines] == [2, 2, 4]
    steps = sorted(os.listdir(os.path.join(work, "checkpoints")))
    assert steps == ["000001", "000002", "000003"]


class ThreadWorkers(Workers):
    """Workers whose all-reduce sums over threads of this process (a barrier and a shared
    list): the agreement logic without a jax.distributed job."""

    def __init__(self, index, count, board):
        super().__init__(index, count)
        self._board = board

    def allreduce_sum(self, tree):
        barrier, slots = self._board
        slots[self.index] = np.asarray(tree)
        barrier.wait()
        total = sum(slots)
        barrier.wait()
        return total


def test_every_worker_trains_the_partitions_worker_0_lists(tmp_path):
    """Worker 1's own listing misses an hour (its _SUCCESS landed after it looked) and has
    one more: both follow worker 0, partition by partition, and stop together."""
    a = tmp_path / "a"
    for h in ("00", "01", "02"):
        (a / "20260101" / h).mkdir(parents=True)
        (a / "20260101" / h / "part-00000").touch()
        (a / "20260101" / h / "_SUCCESS").touch()
    b = tmp_path / "b"
    for h in ("00", "02", "03"):
        (b / "20260101" / h).mkdir(parents=True)
        (b / "20260101" / h / "part-00000").touch()
        (b / "20260101" / h / "_SUCCESS").touch()
    board = (threading.Barrier(2), [None, None])
    got = [None, None]

    def run(i, root):
        source = PartitionSource(SourceConfig(str(root)))
        w = ThreadWorkers(i, 2, board)
        got[i] = [(p.key, p.path, p.time) for p in w.follow_first(source, str(a))]

    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    want = [(f"20260101/{h}", str(a / "20260101" / h), key_time(f"20260101/{h}"))
            for h in ("00", "01", "02")]  # fmt: skip
    assert got[0] == got[1] == want


_SUM_ACROSS_PROCESSES = """
import sys
import jax
import numpy as np
from jaxstream.distributed import initialize
from jaxstream.step import local_mesh, replicate
w = initialize(sys.argv[1], 2, int(sys.argv[2]))
mesh = local_mesh(0, 8)
w.check_same_devices(1 if mesh is None else mesh.size)
mine = {"g": np.arange(3, dtype=np.float32) * (w.index + 1), "n": np.float32(10 * (w.index + 1))}
got = w.device_sum(jax.device_put(replicate(mesh, mine)))
assert got["g"].sharding.device_set == set(jax.local_devices()), got["g"].sharding
print("sum", *np.asarray(got["g"]).tolist(), float(got["n"]), flush=True)
"""


@pytest.mark.parametrize(
    "devices, want",
    [
        ((1, 1), "sum 0.0 3.0 6.0 30.0"),
        ((2, 2), "sum 0.0 3.0 6.0 30.0"),  # each worker's value counted once, not per device
        ((2, 1), "the workers train on different numbers of local devices "
                 "(worker 0: 2, worker 1: 1)"),
    ],
)  # fmt: skip
def test_dense_sums_cross_processes_on_every_local_device(tmp_path, devices, want):
    """Two real jax.distributed processes: the collective that sums dense gradients takes
    each worker's value once however many local devices hold it, leaves the sum on all of
    them, and workers started with different device counts are refused by name."""
    coordinator = f"127.0.0.1:{free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _SUM_ACROSS_PROCESSES, coordinator, str(i)], cwd=REPO,
            env={**os.environ, "PYTHONPATH": REPO,
                 "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for i, n in enumerate(devices)
    ]  # fmt: skip
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert want in out, out[-2000:]
        assert (p.returncode == 0) == want.startswith("sum"), out[-2000:]
