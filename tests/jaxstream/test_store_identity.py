"""A shared store knows which run and checkpoint it holds (real shard servers): a run
without a checkpoint refuses rows it did not write, a resume reloads the store only when
the store is not at the checkpoint's state."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest

from hoststore.rpc import ShardedStore
from jaxstream import train
from jaxstream.workdir import RunError
from tests.conftest import metric_lines, smoke_stream


class CountingStore(ShardedStore):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.loads = 0

    def load(self, table, chains):
        self.loads += 1
        return super().load(table, chains)


def _spec(cfg, name):
    spec = train.feature_spec(cfg)
    table = dataclasses.replace(spec.tables[0], name=name)
    return dataclasses.replace(spec, tables=(table,), slots=tuple(
        dataclasses.replace(s, table=name) for s in spec.slots))  # fmt: skip


def test_foreign_rows_are_refused_and_a_resume_reloads_only_when_needed(tmp_path, cluster):
    cfg = smoke_stream(str(tmp_path / "data"), hours=4)
    spec = _spec(cfg, "identity")
    store = CountingStore(
        cluster.addresses, token=cluster.token, snapshot_root=cluster.snapshot_root
    )
    # Another run (no checkpoints) fills the table.
    train.train_and_evaluate(dataclasses.replace(cfg, checkpoint=False, max_partitions=1),
                             str(tmp_path / "other"), features=spec, store=store)  # fmt: skip
    # A new workdir pointed at it refuses, naming what it found, and changes nothing.
    before = store.stats()["identity"]
    with pytest.raises(RunError, match="already holds rows this run did not write"):
        train.train_and_evaluate(cfg, str(tmp_path / "w"), features=spec, store=store)
    assert store.stats()["identity"] == before
    # Told to adopt them, it trains on top and tags the store with its checkpoints.
    work = str(tmp_path / "adopt")
    train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=2), work, features=spec,
                             store=store, adopt_store=True)  # fmt: skip
    tag = store.stats()["identity"]["tag"]
    assert tag.endswith("/2") and store.loads == 0
    # Resuming against the same live store: it is at checkpoint 2 already, no reload.
    train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=1), work, features=spec,
                             store=store)  # fmt: skip
    assert store.loads == 0 and store.stats()["identity"]["tag"] == tag[:-1] + "3"
    # A store moved past the checkpoint (here: trained on by another call, tag changed) is
    # reloaded from it, and the run continues exactly where the checkpoint left off.
    store.set_tag("identity", "someone-else")
    train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=1), work, features=spec,
                             store=store)  # fmt: skip
    assert store.loads == 1
    lines = metric_lines(f"{work}/metrics.jsonl")
    assert [x["partition"] for x in lines] == [f"20260101/0{h}" for h in range(4)]
    store.close()


def test_a_run_whose_store_another_run_takes_over_stops_and_resumes(tmp_path, cluster):
    """Run B loads its checkpoint into the shards run A trains on: A's next call is refused
    (one line naming the tags), B's table is left as B loaded it, nothing of A's partition
    is committed, and A's rerun takes the table back from its own checkpoint."""
    cfg = smoke_stream(str(tmp_path / "data"), hours=3)
    spec = _spec(cfg, "takeover")
    work = str(tmp_path / "a")
    connect = lambda: ShardedStore(cluster.addresses, token=cluster.token,  # noqa: E731
                                   snapshot_root=cluster.snapshot_root)  # fmt: skip
    b = connect()
    seen = {}

    def run_b_takes_over(part, state, record):
        if part.key == "20260101/00":  # A's checkpoint 1 stands in for B's own
            chains = [[f"{work}/checkpoints/{c}" for c in chain] for chain in
                      json.load(open(f"{work}/checkpoints/000001/meta.json"))["store_chains"][
                          "takeover"]]  # fmt: skip
            b.load("takeover", chains)
            b.set_tag("takeover", "runB/1")
            seen["b"] = b.pull("takeover", np.arange(1000, dtype=np.int64), train=False)

    with pytest.raises(train.StoreFailed, match="is now tagged 'runB/1', not '.*/1'.*another "
                                                "client"):  # fmt: skip
        train.train_and_evaluate(cfg, work, features=spec, store=connect(),
                                 on_partition_end=run_b_takes_over)  # fmt: skip
    np.testing.assert_array_equal(b.pull("takeover", np.arange(1000, dtype=np.int64),
                                         train=False), seen["b"])  # fmt: skip
    assert os.listdir(f"{work}/checkpoints") == ["000001"]
    summary = train.train_and_evaluate(cfg, work, features=spec, store=connect())
    assert summary["partitions"] == 3
    lines = metric_lines(f"{work}/metrics.jsonl")
    assert [x["partition"] for x in lines] == [f"20260101/0{h}" for h in range(3)]
    b.close()
