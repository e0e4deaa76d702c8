"""S store shard servers and W trainers on this machine; trainer flags follow ``--``.

python experiments/launch_local.py --num_shards=2 --num_workers=2 -- --smoke --staleness=0
"""

from __future__ import annotations

import logging
import sys
import tempfile

from absl import app, flags

from jaxstream.launch import launch_local

_SHARDS = flags.DEFINE_integer("num_shards", 2, "Store shard servers.")
_WORKERS = flags.DEFINE_integer("num_workers", 2, "Trainer processes.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Shared workdir; default: a temp dir.")


def main(argv):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    workdir = _WORKDIR.value or tempfile.mkdtemp(prefix="launch_")
    sys.exit(launch_local(_SHARDS.value, _WORKERS.value, argv[1:], workdir))


if __name__ == "__main__":
    app.run(main)
