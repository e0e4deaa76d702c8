"""Disk-tier engine benchmark: batched writes, batched random point reads (present and
absent keys), disk and RAM per row, for each candidate engine.

python experiments/bench_disk.py            # 5M rows; writes BENCHMARKS.md
python experiments/bench_disk.py --smoke    # seconds; prints only
"""

from __future__ import annotations

import dataclasses
import logging

from absl import app, flags

from benchmarks import disk as bench
from benchmarks.report import write_section

_SMOKE = flags.DEFINE_boolean("smoke", False, "Tiny sizes; does not write BENCHMARKS.md.")
_ROWS = flags.DEFINE_integer("rows", 5_000_000, "Rows loaded into each engine.")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Where to record the table.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = bench.DiskBenchConfig(rows=_ROWS.value)
    if _SMOKE.value:
        cfg = dataclasses.replace(cfg, rows=200_000, batch=10_000, batches=3)
    results = {}
    for engine in cfg.engines:
        logging.info("measuring %s", engine)
        results[engine] = bench.measure(cfg, engine)
    table = bench.markdown(cfg, results)
    print(table)
    if not _SMOKE.value:
        write_section("Disk tier engines (experiments/bench_disk.py)", table, _OUT.value)


if __name__ == "__main__":
    app.run(main)
