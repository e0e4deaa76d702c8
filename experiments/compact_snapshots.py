"""Folds a base snapshot and its deltas into one new base, offline.

python experiments/compact_snapshots.py --out=/snap/base2 /snap/base /snap/d1 /snap/d2
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from hoststore import snapshot

_OUT = flags.DEFINE_string("out", None, "Directory of the new base.", required=True)


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("give the base and its deltas, in order")
    try:
        m = snapshot.compact(paths, _OUT.value)
    except (snapshot.SnapshotError, OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(json.dumps({k: m[k] for k in ("id", "kind", "rows", "write_seconds")}))


if __name__ == "__main__":
    app.run(main)
