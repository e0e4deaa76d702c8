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
    _share_compiled_programs(config)
    config.addinivalue_line("markers", "reliability: faults, fuzzing and load (RELIABILITY.md)")


def _share_compiled_programs(config) -> None:
    """One JAX compilation cache on disk for the whole run: every test process and every
    trainer it starts (they inherit the environment) loads a program another compiled
    before instead of compiling it again (most trainer subprocesses compile the same smoke
    step). The cache is new for each run (never one left from an earlier run), bounded, and
    locked (``filelock``) so no process reads an entry another is still writing. Tests that
    kill a trainer at random points share another (:func:`killable_env`):
    an entry cut short by kill -9 would make later readers warn and compile again."""
    if hasattr(config, "workerinput") or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return  # xdist workers inherit the controller's environment
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxstream-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(4 << 30)
    os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    config._jax_cache_dir = os.environ["JAX_COMPILATION_CACHE_DIR"]


def pytest_unconfigure(config):
    if getattr(config, "_jax_cache_dir", None):
        import shutil

        shutil.rmtree(config._jax_cache_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def killable_env(tmp_path_factory) -> dict:
    """The environment for trainers a test kills at random points: a compilation cache
    that only those share (see :func:`_share_compiled_programs`)."""
    cache = tmp_path_factory.mktemp("xla-cache-of-killed-trainers")
    return {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(cache)}
