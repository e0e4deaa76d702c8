"""Turns data files you have into a stream the trainer reads (ROOT/YYYYMMDD/HH/part-* with
a _SUCCESS marker per hour), with progress and a summary.

  # Criteo 1TB day files: one file per day, 24 hours each (equal line ranges)
  python experiments/prepare_stream.py --format=criteo --output=/data/stream \
      --start=20260101/00 /data/criteo/day_0 /data/criteo/day_1
  # Kaggle Criteo train.txt: cut every 250,000 lines
  python experiments/prepare_stream.py --format=criteo --output=/data/stream \
      --lines_per_hour=250000 train.txt
  # Avazu: by its hour column (YYMMDDHH)
  python experiments/prepare_stream.py --format=avazu --output=/data/avazu_stream train.csv
  # Paddle slot files (feasign:slot lines carry no time): like Criteo
  python experiments/prepare_stream.py --format=slot --output=/data/slots \
      --hours_per_file=1 part-000 part-001

Then train on it: ``python experiments/train_stream.py --data_root=/data/stream ...``.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

import console
from jaxstream.data.prepare import FORMATS, PrepareConfig, prepare_stream

_FORMAT = flags.DEFINE_enum("format", None, list(FORMATS), "Input format.", required=True)
_OUTPUT = flags.DEFINE_string("output", None, "Stream root to write (new or empty).",
                              required=True)  # fmt: skip
_START = flags.DEFINE_string("start", "20260101/00", "First partition (line ranges only).")
_HOURS = flags.DEFINE_integer("hours_per_file", 24, "Line ranges: hours each input file covers.")
_LINES = flags.DEFINE_integer(
    "lines_per_hour", None, "Line ranges: cut the concatenated inputs every N lines instead."
)


def main(argv):
    console.quiet_logs()
    inputs = argv[1:]
    cfg = PrepareConfig(_FORMAT.value, _OUTPUT.value, _START.value, _HOURS.value, _LINES.value)
    try:
        with console.progress("prepare", None, "MB", scale=2**20) as update:
            seen = 0

            def report(done: int, total: int) -> None:
                nonlocal seen
                update(done - seen)
                seen = done

            summary = prepare_stream(inputs, cfg, report)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    s = summary
    if not s["partitions"]:
        why = (f"all {s['skipped_lines']:,} lines skipped as not {cfg.format} (first: "
               f"{s['skipped_examples'][0]})" if s["skipped_lines"] else "no lines")  # fmt: skip
        print(f"error: {', '.join(inputs)}: {why}; nothing written", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {s['partitions']} partitions ({s['first']} .. {s['last']}), {s['lines']:,} "
          f"lines, {s['min_lines']:,}-{s['max_lines']:,} per partition, "
          f"{s['skipped_lines']:,} skipped, under {s['output']}")  # fmt: skip
    print("summary: " + json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
