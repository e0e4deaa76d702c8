"""Real shard server processes on loopback, started once per module that asks for them."""

from __future__ import annotations

import os
import tempfile

import pytest

from hoststore.rpc.launch import LocalCluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETERMINISTIC_KEYS = ("partition", "progressive_auc", "train_auc", "logloss", "table_rows",
                      "admitted")  # fmt: skip


def smoke_stream(root: str, hours: int, **overrides):
    """Generates a small stream under ``root``; returns the smoke TrainConfig that reads it
    deterministically (staleness 0, count_filter:2 admission)."""
    import dataclasses

    from jaxstream import config
    from jaxstream.data.synthetic import StreamConfig, generate

    stream = StreamConfig(hours=hours, rows_per_hour=2000, max_vocab=3000)
    generate(root, stream)
    overrides = {"staleness": 0, "admission": "count_filter:2", **overrides}
    return dataclasses.replace(config.smoke_config(), data_root=root, synthetic=stream,
                               **overrides)  # fmt: skip


def metric_lines(path: str, keys=DETERMINISTIC_KEYS) -> list[dict]:
    """The given fields of every line of a metrics JSONL."""
    import json

    with open(path) as f:
        return [{k: json.loads(x)[k] for k in keys} for x in f]


class Cluster(LocalCluster):
    """A LocalCluster that writes its own token file."""

    def __init__(self, num_shards, extra_args=(), token=None, tmp=None, creds=None):
        """Snapshots may go anywhere under the system's temporary directory (where pytest's
        ``tmp_path`` lies)."""
        self.token = token
        token_file = None
        if token:
            token_file = os.path.join(tmp, f"token-{token}")
            with open(token_file, "w") as f:
                f.write(token + "\n")
        super().__init__(num_shards, tuple(extra_args), token_file, creds,
                         snapshot_root=tempfile.gettempdir())  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(2, token="s3cret", tmp=str(tmp_path_factory.mktemp("cluster")))
    yield c
    c.stop()


def pytest_addoption(parser):
    parser.addoption(
        "--load-seconds",
        type=float,
        default=10.0,  # the flat-memory check needs the warm-up inside the first half
        help="duration of the concurrent-load reliability test (CI: 10 s)",
    )
    parser.addoption(
        "--kills",
        type=int,
        default=5,
        help="kill -9s of the trainer in the random-kill test (CI: 5; RELIABILITY.md: 10)",
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "reliability: faults, fuzzing and load (RELIABILITY.md)")
