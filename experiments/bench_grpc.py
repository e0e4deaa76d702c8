"""gRPC store benchmark: pull/push through 1 and 2 shard servers vs in process.

python experiments/bench_grpc.py            # writes BENCHMARKS.md
python experiments/bench_grpc.py --smoke    # seconds
"""

from __future__ import annotations

import logging

from absl import app, flags

from benchmarks import store as bench
from benchmarks.report import write_section

_SMOKE = flags.DEFINE_boolean("smoke", False, "Small sizes; does not write BENCHMARKS.md.")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Where to record the table.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = bench.GrpcBenchConfig()
    if _SMOKE.value:
        cfg = bench.GrpcBenchConfig(rows=100_000, batch_unique=10_000, batches=3)
    table = bench.grpc_markdown(cfg, bench.run_grpc(cfg))
    print(table)
    if not _SMOKE.value:
        write_section("gRPC store (experiments/bench_grpc.py)", table, _OUT.value)


if __name__ == "__main__":
    app.run(main)
