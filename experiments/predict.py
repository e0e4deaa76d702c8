"""Scores a partition (a folder of part files) or one file with the newest checkpoint of a
training workdir: prints its AUC and log loss; ``--output`` also writes one prediction per
example (file, line, label, prediction) in the input's order.

python experiments/predict.py --workdir=/tmp/run --partition=/data/stream/20260102/05
python experiments/predict.py --workdir=/tmp/run --partition=day_23.tsv --output=scores.csv
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

import console
from jaxstream import records
from jaxstream.checkpoint import CheckpointError
from jaxstream.serving import Predictor

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.", required=True)
_PARTITION = flags.DEFINE_string("partition", None, "Partition folder or file to score.",
                                 required=True)  # fmt: skip
_OUTPUT = flags.DEFINE_string("output", None, "Write the scores here (CSV).")


def main(argv):
    del argv
    console.quiet_logs()
    try:
        predictor = Predictor(_WORKDIR.value)
    except (OSError, ValueError, CheckpointError) as e:
        sys.exit(f"error: --workdir={_WORKDIR.value}: {e}")
    for step, why in predictor.unusable:
        print(f"warning: checkpoint {step} does not verify, not used: {why}", file=sys.stderr)
    try:
        examples, report = predictor.read(_PARTITION.value)
    except ValueError as e:
        sys.exit(f"error: --partition={e}")
    scores = predictor.predict(examples)
    if _OUTPUT.value:
        try:
            records.write_scores(_OUTPUT.value, examples, report, scores)
        except OSError as e:
            sys.exit(f"error: --output={_OUTPUT.value}: {e.strerror or e}")
    m = predictor.evaluate_scores(examples.labels, scores)
    print(json.dumps({"checkpoint": predictor.step, "trained_through": predictor.cursor,
                      "malformed_lines": report.malformed, **m.summary()}))  # fmt: skip


if __name__ == "__main__":
    app.run(main)
