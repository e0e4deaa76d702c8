"""A pass trained on a device (begin_pass, the device's own optimizer, end_pass) leaves the
table exactly as the synchronous per-batch loop does (pull, gradients, push, batch by
batch): statistics, admission, pending counters, weights and optimizer state."""

from __future__ import annotations

import numpy as np
import pytest

import hoststore as hs
from hoststore import snapshot as snap
from hoststore.disk_tier import DiskTier
from tests.hoststore.test_snapshot import assert_same
from tests.hoststore.test_table_model import CONFIGS

KEYS = np.array([0, -1, 1, 2**63 - 1, -(2**63), *range(5, 40)], np.int64)


def passes(seed: int, n_passes: int = 4, batches: int = 5):
    """Passes of batches: (distinct ids, occurrences, clicks) each."""
    rng = np.random.default_rng(seed)
    for _ in range(n_passes):
        out = []
        for _ in range(batches):
            ids = np.unique(KEYS[rng.zipf(1.3, rng.integers(1, 20)) % len(KEYS)])
            rng.shuffle(ids)
            occ = rng.integers(1, 4, len(ids)).astype(np.float32)
            clicks = np.minimum(rng.integers(0, 2, len(ids)), occ).astype(np.float32)
            out.append((ids, occ, clicks))
        yield out


def gradients(rows: np.ndarray, occ: np.ndarray) -> np.ndarray:
    """Stands in for the model: depends on the rows the batch read, as a real one does."""
    return (0.5 * rows[:, 2:] - 0.1 * occ[:, None] + 0.05).astype(np.float32)


def per_batch(table, batch) -> np.ndarray:
    ids, occ, clicks = batch
    rows = table.pull(ids, train=True, with_counts=True, shows=occ)
    table.push(ids, gradients(rows, occ), clicks=clicks, counts=occ, assume_unique=True)
    return rows


def on_device(begin, end, cfg, batches, while_lent=None) -> list[np.ndarray]:
    """What the trainer's pass mode does, with the numpy form of the table's optimizer in
    the device's place: ``begin(batches, with_counts=True)``, the updates, ``end(keys,
    weights, state)``; returns the rows each batch read. ``while_lent()`` runs between the
    begin and the end."""
    p = begin(batches, with_counts=True)
    if while_lent is not None:
        while_lent()
    keys = p.keys[p.present]
    weights, state = p.weights.copy(), [s.copy() for s in p.state]
    named = type(cfg.optimizer.init(0, cfg.dim))
    read = []
    for (ids, occ, _), found, counts, lent in zip(batches, p.found, p.counts, p.slots,
                                                  strict=True):  # fmt: skip
        has = lent >= 0  # each id's row among those lent; found ids all have one
        assert has[found].all() and (keys[lent[has]] == ids[has]).all()
        assert not np.isin(ids[~has], keys).any()
        slot = lent[found]
        rows = np.full((len(ids), 2 + cfg.dim), cfg.admission.default_value, np.float32)
        rows[:, :2] = counts
        rows[found, 2:] = weights[slot]
        read.append(rows)
        w, s = cfg.optimizer.update(gradients(rows, occ)[found],
                                    named(*(x[slot] for x in state)), weights[slot],
                                    p.clock, occ[found], cfg.weight_bounds)  # fmt: skip
        weights[slot] = w
        for x, new in zip(state, s, strict=True):
            x[slot] = new
    end(keys, weights, tuple(state))
    return read


def _tables(cfg, kind: str, tmp_path):
    """(the per-batch loop's table, the pass's table) of one kind."""
    if kind == "sharded":  # shards split max_rows and max_pending: compare like with like
        return hs.ShardedTable(cfg, 3), hs.ShardedTable(cfg, 3)
    tier = DiskTier(str(tmp_path), max_rows=3) if kind == "tiered" else None
    return hs.EmbeddingTable(cfg), hs.EmbeddingTable(cfg, tier=tier)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("kind", ["table", "tiered", "sharded"])
def test_a_pass_trained_elsewhere_equals_the_per_batch_loop(tmp_path, name, kind):
    cfg = CONFIGS[name]
    want, got = _tables(cfg, kind, tmp_path)
    # Deltas while a pass's rows are lent and after it: the rows it writes back count as
    # changed after the cut (base + deltas == live), or serving would miss what the device
    # trained.
    paths = [str(tmp_path / "base")]
    cuts = [snap.save(got, paths[0], "base")]

    def delta():
        paths.append(str(tmp_path / f"delta{len(paths)}"))
        cuts.append(snap.save(got, paths[-1], "delta", cuts[-1]))

    for i, batches in enumerate(passes(seed=len(name))):
        read_want = [per_batch(want, b) for b in batches]
        read_got = on_device(got.begin_pass, got.end_pass, cfg, batches, while_lent=delta)
        for b, (a, w) in enumerate(zip(read_got, read_want, strict=True)):
            np.testing.assert_array_equal(a, w, err_msg=f"pass {i} batch {b}: rows read")
        assert_same(want, got)
        for t in (want, got):
            t.advance_clock()
            if i % 2:
                t.shrink()
        delta()
    assert_same(want, got)
    assert_same(got, snap.load(paths, cfg, shards=3 if kind == "sharded" else 1))
    assert len(want) > 0
    if kind == "tiered":
        assert got.stats()["faulted_in"] > 0, "no row came back from disk"
    got.close()


def test_end_pass_refuses_keys_without_a_row():
    t = hs.EmbeddingTable(CONFIGS["always_adagrad_unseen"])
    p = t.begin_pass([(np.array([3, 4], np.int64), None, None)])
    assert p.present.all() and [f.tolist() for f in p.found] == [[True, True]]
    with pytest.raises(ValueError, match="no row"):
        t.end_pass(np.array([3, 99], np.int64), np.zeros((2, t.config.dim), np.float32),
                   tuple(np.zeros((2, *s.shape[1:]), s.dtype) for s in p.state))  # fmt: skip
    with pytest.raises(ValueError, match="shape"):
        t.end_pass(p.keys, np.zeros((1, t.config.dim), np.float32), p.state)
