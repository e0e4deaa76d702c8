"""S store shard servers and W trainers on this machine; trainer flags follow ``--``.

python experiments/launch_local.py --num_shards=2 --num_workers=2 -- --smoke --staleness=0

The role of paddle.distributed.launch: S shard server processes and W trainer processes
(``train_stream.py``) on loopback. Multi-host runs use the same trainer flags with real
addresses.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile

from absl import app, flags

from hoststore.rpc.launch import LocalCluster, free_port
from jaxstream import config as config_lib
from jaxstream import workdir as workdir_lib
from jaxstream.data.synthetic import generate

_SHARDS = flags.DEFINE_integer("num_shards", 2, "Store shard servers.", lower_bound=1)
_WORKERS = flags.DEFINE_integer("num_workers", 2, "Trainer processes.", lower_bound=1)
_WORKDIR = flags.DEFINE_string("workdir", None, "Shared workdir; default: a temp dir.")
log = logging.getLogger(__name__)
TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_stream.py")


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
    with LocalCluster(num_shards, log_dir=workdir, snapshot_root=workdir) as cluster:
        coordinator = f"127.0.0.1:{free_port()}"
        procs = []
        for i in range(num_workers):
            out = None if i == 0 else open(os.path.join(workdir, f"worker-{i}.log"), "w")
            procs.append(subprocess.Popen(
                [sys.executable, TRAIN_SCRIPT, *args, f"--workdir={workdir}",
                 f"--store_addresses={','.join(cluster.addresses)}",
                 f"--store_snapshot_root={cluster.snapshot_root}",
                 f"--num_workers={num_workers}", f"--worker_index={i}",
                 f"--coordinator={coordinator}"],
                stdout=out, stderr=subprocess.STDOUT if out else None,
            ))  # fmt: skip
        codes = [p.wait() for p in procs]
    log.info("workers exited with %s", codes)
    return max(codes, key=abs)


def main(argv):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="launch_")
    try:
        workdir_lib.prepare(workdir)
    except workdir_lib.RunError as e:
        sys.exit(f"error: {e}")
    sys.exit(launch_local(_SHARDS.value, _WORKERS.value, argv[1:], workdir))


if __name__ == "__main__":
    app.run(main)
