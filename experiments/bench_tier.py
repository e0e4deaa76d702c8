"""Disk-tier benchmark: RSS against the RAM budget for a table ten times its size, RAM per
cold feature, Zipf throughput against an all-RAM table, a cold-miss batch, base snapshot
and shrink speed over the tier, and the projection to 10^9..10^11 features.

python experiments/bench_tier.py            # 50M rows, 5M in RAM; writes BENCHMARKS.md
python experiments/bench_tier.py --smoke    # seconds; prints only
"""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys

from absl import app, flags

from benchmarks import tier as bench
from benchmarks.report import write_section

_SMOKE = flags.DEFINE_boolean("smoke", False, "Tiny sizes; does not write BENCHMARKS.md.")
_ROWS = flags.DEFINE_integer("rows", 50_000_000, "Rows of the table ten times its budget.")
_BUDGET = flags.DEFINE_integer("budget_rows", 5_000_000, "Its RAM budget, in rows.")
_DISK = flags.DEFINE_string("disk_dir", "", "Where the tier goes (default: a temp dir).")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Where to record the results.")
_PHASE = flags.DEFINE_string("phase", None, "(internal) rss, throughput or e2e, here.")
_CONFIG = flags.DEFINE_string("config", None, "(internal) the config as JSON.")


def _in_child(phase: str, cfg: bench.TierBenchConfig) -> dict:
    """One phase in a fresh process: its RSS counts that phase alone."""
    cmd = [sys.executable, __file__, f"--phase={phase}",
           f"--config={json.dumps(dataclasses.asdict(cfg))}"]  # fmt: skip
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv):
    del argv
    if _PHASE.value:
        cfg = bench.TierBenchConfig(**json.loads(_CONFIG.value))
        phase = {"rss": bench.rss_phase, "throughput": bench.throughput_phase,
                 "e2e": bench.e2e_phase}[_PHASE.value]  # fmt: skip
        print(json.dumps(phase(cfg)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = bench.TierBenchConfig(rows=_ROWS.value, budget_rows=_BUDGET.value, disk_dir=_DISK.value)
    if _SMOKE.value:
        cfg = dataclasses.replace(cfg, rows=400_000, budget_rows=40_000, batch=20_000,
                                  zipf_rows=200_000, zipf_batch=10_000,
                                  zipf_batches=5, cold_batch=1_000, e2e_hours=2,
                                  e2e_rows_per_hour=20_000, e2e_memory_mb=2)  # fmt: skip
    logging.info("RSS, snapshot and shrink: %s rows, %s in RAM", f"{cfg.rows:,}",
                 f"{cfg.budget_rows:,}")  # fmt: skip
    rss = _in_child("rss", cfg)
    logging.info("%s", rss)
    logging.info("Zipf throughput: %s rows", f"{cfg.zipf_rows:,}")
    tp = _in_child("throughput", cfg)
    logging.info("%s", tp)
    logging.info("end to end: %d hours x %s examples", cfg.e2e_hours,
                 f"{cfg.e2e_rows_per_hour:,}")  # fmt: skip
    e2e = _in_child("e2e", cfg)
    logging.info("%s", e2e)
    text = bench.markdown(cfg, rss, tp) + "\n\n" + bench.e2e_markdown(cfg, e2e)
    print(text)
    if not _SMOKE.value:
        write_section("Disk tier (experiments/bench_tier.py)", text, _OUT.value)


if __name__ == "__main__":
    app.run(main)
