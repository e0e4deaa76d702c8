"""Shows and clicks as Paddle counts them, checked against counts taken from the data files:
every occurrence of a feature in a training example is a show, every occurrence in a
clicked example a click; evaluation counts nothing. On every kind of store."""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np
import pytest

import hoststore as hs
from jaxstream import train
from jaxstream.data import readers
from jaxstream.features import salt_ids
from tests.conftest import smoke_stream

HOURS = 2


def _occurrences(root: str, max_len: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, occurrences, clicked occurrences) of every store key in the stream's files."""
    keys, clicked = [], []
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "part-*")))[:HOURS]:
        ex, _ = readers.read_criteo(path)
        for s in readers.CRITEO_SLOTS:
            offsets = ex.slot_offsets[s]
            lens = np.minimum(np.diff(offsets), max_len)
            example = np.repeat(np.arange(len(ex)), lens)
            keys.append(salt_ids(ex.slot_ids[s][offsets[:-1][example]], s))
            clicked.append(ex.labels[example])
    keys, clicked = np.concatenate(keys), np.concatenate(clicked)
    uniq, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    return uniq, counts, np.bincount(inverse, weights=clicked)


def _store(kind, cluster):
    if kind == "grpc":
        return cluster.connect(token=cluster.token)
    return hs.LocalStore(shards=3 if kind == "sharded" else 1)


def _table_name(kind, request) -> str:
    # The gRPC cluster is shared by the module: a table of its own per test.
    return f"emb_{request.node.name.replace('[', '_').replace(']', '').replace('-', '_')}"


@pytest.mark.parametrize("kind", ["local", "sharded", "grpc"])
def test_shows_and_clicks_count_every_training_occurrence(tmp_path, cluster, kind, request):
    cfg = smoke_stream(str(tmp_path / "data"), hours=HOURS, admission="always",
                       checkpoint=False)  # fmt: skip
    spec = train.feature_spec(cfg)
    table = dataclasses.replace(spec.tables[0], name=_table_name(kind, request))
    spec = dataclasses.replace(spec, tables=(table,),
                               slots=tuple(dataclasses.replace(s, table=table.name)
                                           for s in spec.slots))  # fmt: skip
    store = _store(kind, cluster)
    train.train_and_evaluate(cfg, str(tmp_path / "work"), features=spec, store=store)
    keys, shows, clicks = _occurrences(cfg.data_root)
    got = store.pull(table.name, keys, train=False, with_counts=True)
    np.testing.assert_array_equal(got[:, 0], shows)  # shows: training occurrences
    np.testing.assert_array_equal(got[:, 1], clicks)  # clicks: clicked occurrences
    assert (got[:, 0] >= got[:, 1]).all()
    stats = store.stats()[table.name]
    assert stats["rows"] == len(keys) and stats["pending"] == 0
    store.close()


@pytest.mark.parametrize("n", [2, 3])
def test_count_filter_admits_exactly_the_features_seen_n_times(tmp_path, n):
    cfg = smoke_stream(str(tmp_path / "data"), hours=HOURS, admission=f"count_filter:{n}",
                       checkpoint=False)  # fmt: skip
    store = hs.LocalStore()
    train.train_and_evaluate(cfg, str(tmp_path / "work"), store=store)
    keys, shows, _ = _occurrences(cfg.data_root)
    present = store.table("embedding").row_stats(keys)["present"]
    np.testing.assert_array_equal(present, shows >= n)
    pending = store.table("embedding").pending_stats(keys)
    np.testing.assert_array_equal(pending["pending"], shows < n)
    np.testing.assert_array_equal(pending["show"][shows < n], shows[shows < n])


class _RecordingStore(hs.LocalStore):
    """An in-process store that keeps every push the trainer makes."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.pushes = []

    def push(self, table, ids, grads, **kw):
        self.pushes.append((ids.copy(), grads.copy(), {k: v for k, v in kw.items()}))
        super().push(table, ids, grads, **kw)


def test_paddle_adagrad_on_the_trainer_path_divides_by_each_keys_occurrences(tmp_path):
    """The trainer's pushes replayed on the direct table path give the trainer's rows, and
    one key's row follows Paddle's rule computed by hand from those pushes."""
    cfg = smoke_stream(str(tmp_path / "data"), hours=1, admission="always", checkpoint=False,
                       sparse_optimizer="paddle_adagrad", initializer_scale=0.0)  # fmt: skip
    spec = train.feature_spec(cfg)
    store = _RecordingStore(spec.tables)
    train.train_and_evaluate(cfg, str(tmp_path / "work"), store=store)
    table = spec.tables[0]
    replay = hs.EmbeddingTable(table)
    for ids, grads, kw in store.pushes:
        replay.pull(ids, train=True, shows=kw["counts"])
        replay.push(ids, grads, **kw)
    keys = np.concatenate([ids for ids, _, _ in store.pushes])
    np.testing.assert_array_equal(store.pull(table.name, keys, train=False),
                                  replay.pull(keys, train=False))  # fmt: skip
    # By hand, for the key with the most occurrences in one batch.
    b = max(range(len(store.pushes)), key=lambda b: store.pushes[b][2]["counts"].max())
    ids, _, kw = store.pushes[b]
    key = ids[int(np.argmax(kw["counts"]))]
    w, g2 = np.zeros(table.dim), 0.0
    lr, g0 = table.optimizer.spec["learning_rate"], table.optimizer.spec["initial_g2sum"]
    for ids, grads, kw in store.pushes:
        hit = np.flatnonzero(ids == key)
        if len(hit):
            n = float(kw["counts"][hit[0]])
            assert n >= 1
            scaled = grads[hit[0]].astype(np.float64) / n
            w = w - lr * scaled * np.sqrt(g0 / (g0 + g2))
            g2 += float(np.mean(scaled**2))
    np.testing.assert_allclose(store.pull(table.name, np.array([key]), train=False)[0], w,
                               rtol=1e-4, atol=1e-7)  # fmt: skip
    assert max(kw["counts"].max() for _, _, kw in store.pushes) > 1  # occurrences did repeat
