"""What an ideal learner could reach on the e2e benchmark's stream: the oracle, the seen-5
and Bayes ceilings, and two honest online Bayesian learners of the per-ID weights.

python experiments/bayes_references.py           # 24 h x 50K rows; writes BENCHMARKS.md
python experiments/bayes_references.py --smoke   # seconds; prints only
"""

from __future__ import annotations

import logging

from absl import app, flags

from benchmarks.e2e import E2EBenchConfig
from benchmarks.learners import learner_references, references_markdown
from benchmarks.report import write_section
from jaxstream.data import StreamConfig

_SMOKE = flags.DEFINE_boolean("smoke", False, "Tiny stream; does not write BENCHMARKS.md.")
_OUT = flags.DEFINE_string("out", "BENCHMARKS.md", "Where to record the table.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    e2e = E2EBenchConfig()
    stream = StreamConfig(hours=e2e.hours, rows_per_hour=e2e.rows_per_hour,
                          max_vocab=e2e.max_vocab, zipf=e2e.zipf, seed=e2e.seed)  # fmt: skip
    skip = e2e.skip_hours
    if _SMOKE.value:
        stream = StreamConfig(hours=4, rows_per_hour=5_000, max_vocab=100_000, zipf=e2e.zipf)
        skip = 1
    table = references_markdown(stream, learner_references(stream, skip), skip)
    print(table)
    if not _SMOKE.value:
        write_section("Learner references (experiments/bayes_references.py)", table, _OUT.value)


if __name__ == "__main__":
    app.run(main)
