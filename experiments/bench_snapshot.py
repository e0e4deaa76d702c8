"""Snapshot benchmark: base write/read MB/s, 10M-row restore time, delta size.

python experiments/bench_snapshot.py           # 10M rows; writes BENCHMARKS.md
python experiments/bench_snapshot.py --smoke   # seconds
"""

from __future__ import annotations

import logging
import tempfile

from absl import app, flags

from benchmarks import store as bench
from benchmarks.report import write_section

_SMOKE = flags.DEFINE_boolean("smoke", False, "200K rows; does not write BENCHMARKS.md.")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Where to record the table.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = bench.SnapshotBenchConfig(rows=200_000 if _SMOKE.value else 10_000_000)
    with tempfile.TemporaryDirectory(prefix="bench_snapshot_") as workdir:
        res = bench.run_snapshots(cfg, workdir)
    table = bench.snapshot_markdown(cfg, res)
    print(table)
    if not _SMOKE.value:
        write_section("Snapshots (experiments/bench_snapshot.py)", table, _OUT.value)


if __name__ == "__main__":
    app.run(main)
