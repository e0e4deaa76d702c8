"""Scores a partition with the newest checkpoint of a training workdir and reports its AUC.

python experiments/predict.py --workdir=/tmp/run --partition=/data/stream/20260102/05
"""

from __future__ import annotations

import json
import logging

from absl import app, flags

from jaxstream.serving import Predictor
from jaxstream.stream import Partition
from jaxstream.train import read_partition

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints.", required=True)
_PARTITION = flags.DEFINE_string("partition", None, "Partition directory to score.", required=True)


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    predictor = Predictor(_WORKDIR.value)
    examples, report = read_partition(predictor.config, Partition("", _PARTITION.value, None))
    m = predictor.evaluate(examples)
    print(json.dumps({"checkpoint": predictor.step, "trained_through": predictor.cursor,
                      "malformed_lines": report.malformed, **m.summary()}))  # fmt: skip


if __name__ == "__main__":
    app.run(main)
