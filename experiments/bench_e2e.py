"""End-to-end benchmark: quality vs a hashed baseline, admission, speed, device/host split.

python experiments/bench_e2e.py             # 24 h x 50K rows; writes BENCHMARKS.md
python experiments/bench_e2e.py --smoke     # a minute; prints only
"""

from __future__ import annotations

import dataclasses
import json
import logging

from absl import app, flags

from benchmarks import e2e as benchmark
from benchmarks.report import write_section

_SMOKE = flags.DEFINE_boolean("smoke", False, "Tiny stream; does not write BENCHMARKS.md.")
_HOURS = flags.DEFINE_integer("hours", 24, "Hours in the generated stream.")
_ROWS = flags.DEFINE_integer("rows_per_hour", 50_000, "Rows per hour.")
_BATCH = flags.DEFINE_integer("batch_size", 1024, "Examples per step.")
_SHARDS = flags.DEFINE_integer("store_shards", 1, "In-process store shards per table.")
_GRPC = flags.DEFINE_integer("grpc_shards", 0, "Also train through N local gRPC shards.")
_PASS = flags.DEFINE_integer("pass_batches", 0, "Train ours in pass mode, N batches a pass.")
_BASELINE = flags.DEFINE_boolean("baseline", True, "Also run the hashed baseline.")
_COMPARE = flags.DEFINE_boolean("compare_admission", True, "Also train with --admission.")
_ADMISSION = flags.DEFINE_string("admission", "count_filter:3", "Admission policy to compare.")
_SWEEP = flags.DEFINE_list(
    "baseline_rows_sweep",
    ["65536", "262144", "4194304"],
    "Extra hashed-baseline sizes (empty: none).",
)
_CVM = flags.DEFINE_boolean("cvm", True, "Also train with the store's count features (CVM).")
_SECTION = flags.DEFINE_string("section", "End to end (experiments/bench_e2e.py)", "Section.")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Where to record the table.")
_JSON = flags.DEFINE_string("json", None, "Also dump the raw results here.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = benchmark.E2EBenchConfig(
        hours=_HOURS.value, rows_per_hour=_ROWS.value, batch_size=_BATCH.value,
        store_shards=_SHARDS.value, run_baseline=_BASELINE.value, admission=_ADMISSION.value,
        run_admission=_COMPARE.value, grpc_shards=_GRPC.value, run_cvm=_CVM.value,
        baseline_rows_sweep=tuple(int(x) for x in _SWEEP.value), pass_batches=_PASS.value,
    )  # fmt: skip
    if _SMOKE.value:
        cfg = dataclasses.replace(cfg, hours=4, rows_per_hour=5_000, skip_hours=1,
                                  max_vocab=100_000, step_timing_reps=5,
                                  baseline_rows_sweep=(1 << 16,))  # fmt: skip
    res = benchmark.run(cfg)
    table = benchmark.markdown(res)
    print(table)
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(res, f, indent=1, default=str)
    if not _SMOKE.value:
        write_section(_SECTION.value, table, _OUT.value)


if __name__ == "__main__":
    app.run(main)
