"""Host-only benchmark: the pipeline's examples/s per core count, without a real device step.

python experiments/bench_host.py            # 8 h x 50K rows, 1 and 2 cores (and 2 x 1 core
                                            # side by side); writes BENCHMARKS.md
python experiments/bench_host.py --smoke    # seconds; prints only
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile

from absl import app, flags

from benchmarks import host as bench
from benchmarks.report import write_section

_SMOKE = flags.DEFINE_boolean("smoke", False, "Tiny stream; does not write BENCHMARKS.md.")
_ROOT = flags.DEFINE_string("root", None, "The stream (generated there when missing).")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Where to record the table.")
_CORES = flags.DEFINE_list("cores", ["1", "2"], "Core counts to pin each run to.")
_MODES = flags.DEFINE_list("modes", ["null", "lr", "lr_pass"], "null, lr and/or lr_pass.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Runs of each mode at each core count.", lower_bound=1)
_INDEPENDENT = flags.DEFINE_boolean(
    "independent", True, "Also N independent 1-core processes side by side, for N > 1."
)
_ZIPF = flags.DEFINE_float("zipf", 1.1, "The stream's Zipf exponent (lower: heavier tail).")
_VOCAB = flags.DEFINE_integer("max_vocab", 200_000, "The stream's vocabulary per slot.")
_SECTION = flags.DEFINE_string(
    "section",
    "Host pipeline alone (experiments/bench_host.py)",
    "The BENCHMARKS.md section to write.",
)
_CHILD = flags.DEFINE_boolean("child", False, "(internal) measure in this process.")
_MODE = flags.DEFINE_string("mode", "null", "(internal) null or lr.")
_CONFIG = flags.DEFINE_string("config", None, "(internal) the config as JSON.")


def main(argv):
    del argv
    if _CHILD.value:
        fields = json.loads(_CONFIG.value)
        cfg = bench.HostBenchConfig(**{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in fields.items()})  # fmt: skip
        print(json.dumps(bench.measure(cfg, _ROOT.value, _MODE.value)))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = bench.HostBenchConfig(cores=tuple(int(c) for c in _CORES.value),
                                modes=tuple(_MODES.value), rounds=_ROUNDS.value,
                                independent=_INDEPENDENT.value,
                                zipf=_ZIPF.value,
                                max_vocab=_VOCAB.value)  # fmt: skip
    if _SMOKE.value:
        cfg = dataclasses.replace(cfg, hours=2, rows_per_hour=3000, batch_size=512, rounds=1)
    root = _ROOT.value or os.path.join(tempfile.gettempdir(),
                                       f"bench_host_{cfg.hours}x{cfg.rows_per_hour}_z{cfg.zipf}"
                                       f"_v{cfg.max_vocab}")  # fmt: skip
    table = bench.markdown(cfg, bench.run(cfg, root, os.path.abspath(__file__)))
    print(table)
    if not _SMOKE.value:
        write_section(_SECTION.value, table, _OUT.value)


if __name__ == "__main__":
    app.run(main)
