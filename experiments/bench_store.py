"""Store benchmark: pull/push vs raw numpy, lookups/s, memory per feature, shard scaling.

python experiments/bench_store.py            # the issue's sizes (10M rows)
python experiments/bench_store.py --smoke    # seconds
"""

from __future__ import annotations

import dataclasses
import logging

from absl import app, flags

from benchmarks import store as bench
from benchmarks.report import write_section

_SMOKE = flags.DEFINE_boolean("smoke", False, "Tiny sizes; does not write BENCHMARKS.md.")
_ROWS = flags.DEFINE_integer("rows", 10_000_000, "Rows in the table.")
_THREADS = flags.DEFINE_integer("lookup_threads", 2, "Threads for the threaded lookup figure.")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Where to record the table.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = bench.StoreBenchConfig(rows=_ROWS.value, lookup_threads=_THREADS.value)
    if _SMOKE.value:
        cfg = dataclasses.replace(
            cfg,
            rows=200_000,
            batches=4,
            lookup_batch=100_000,
            memory_rows=100_000,
            pending_keys=50_000,
        )
    res = bench.run(cfg)
    table = bench.markdown(cfg, res)
    print(table)
    if not _SMOKE.value:
        write_section("Store (experiments/bench_store.py)", table, _OUT.value)


if __name__ == "__main__":
    app.run(main)
