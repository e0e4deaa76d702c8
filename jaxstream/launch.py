"""Local multi-process training: S store shard servers + W trainer processes on loopback
(the role of paddle.distributed.launch). Multi-host runs use the same trainer flags with
real addresses."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

from hoststore.rpc.launch import LocalCluster, free_port
from jaxstream import config as config_lib
from jaxstream.data.synthetic import generate

log = logging.getLogger(__name__)
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "experiments", "train_stream.py")  # fmt: skip


def launch_local(num_shards: int, num_workers: int, train_args: list[str], workdir: str) -> int:
    """Runs the trainers to completion; returns the worst exit code (0 = all good)."""
    os.makedirs(workdir, exist_ok=True)
    args = list(train_args)
    if not any(a.startswith("--data_root") for a in args):
        # Generate the stream once here, not in every worker.
        cfg = config_lib.smoke_config() if "--smoke" in args else config_lib.get_config()
        root = os.path.join(workdir, "data")
        if not os.path.isdir(root):
            generate(root, cfg.synthetic)
        args.append(f"--data_root={root}")
    with LocalCluster(num_shards, log_dir=workdir) as cluster:
        coordinator = f"127.0.0.1:{free_port()}"
        procs = []
        for i in range(num_workers):
            out = None if i == 0 else open(os.path.join(workdir, f"worker-{i}.log"), "w")
            procs.append(subprocess.Popen(
                [sys.executable, TRAIN_SCRIPT, *args, f"--workdir={workdir}",
                 f"--store_addresses={','.join(cluster.addresses)}",
                 f"--num_workers={num_workers}", f"--worker_index={i}",
                 f"--coordinator={coordinator}"],
                stdout=out, stderr=subprocess.STDOUT if out else None,
            ))  # fmt: skip
        codes = [p.wait() for p in procs]
    log.info("workers exited with %s", codes)
    return max(codes, key=abs)
