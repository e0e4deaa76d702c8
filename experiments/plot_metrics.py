"""PNG plots from a metrics JSONL.

python experiments/plot_metrics.py --metrics_file=/tmp/run/metrics.jsonl --out=/tmp/run.png
"""

from __future__ import annotations

import sys

from absl import app, flags

from jaxstream.plots import load_metrics, plot_metrics

_METRICS = flags.DEFINE_string("metrics_file", None, "metrics.jsonl of a run.", required=True)
_OUT = flags.DEFINE_string("out", "metrics.png", "PNG to write.")
_TITLE = flags.DEFINE_string("title", "", "Plot title.")


def main(argv):
    del argv
    try:
        print(plot_metrics(load_metrics(_METRICS.value), _OUT.value, _TITLE.value))
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
