"""Snapshots: base + deltas reproduce the live table exactly; damage is always detected."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hoststore as hs
from hoststore import optimizers as opt
from hoststore import snapshot as snap
from hoststore._changes import GENERATIONS
from tests.conftest import REPO

UNIVERSE = np.array([0, -1, 1, 2**63 - 1, -(2**63), 5, 6, 7, 8, 9, 10, 11, 12], np.int64)
CFG = hs.TableConfig(
    "t", 3, optimizer=opt.adam(0.05), admission=hs.count_filter(2, max_pending=5),
    eviction=hs.Eviction(decay=0.9, unseen_ticks=2, max_rows=8, shrink_decay=0.95), seed=4,
)  # fmt: skip


def full_state(table) -> dict:
    """Everything observable, ordered by key: rows with optimizer state, pending, scalars."""
    shards = table.shards if isinstance(table, hs.ShardedTable) else [table]
    rows = {
        k: np.concatenate([s.export_rows()[k] for s in shards]) for k in shards[0].row_columns()
    }
    order = np.argsort(rows["key"])
    pend = {k: np.concatenate([s.export_pending()[k] for s in shards])
            for k in ("key", "show", "click", "last_seen")}  # fmt: skip
    porder = np.argsort(pend["key"])
    scal = [s.export_scalars() for s in shards]
    totals = {k: sum(x[k] for x in scal) for k in scal[0] if k != "clock"}
    return {"rows": {k: v[order] for k, v in rows.items()},
            "pending": {k: v[porder] for k, v in pend.items()},
            "clock": scal[0]["clock"], "totals": totals}  # fmt: skip


def assert_same(a, b, probability_totals=True):
    sa, sb = full_state(a), full_state(b)
    for k in sa["rows"]:
        np.testing.assert_array_equal(sa["rows"][k], sb["rows"][k], err_msg=f"row column {k}")
    for k in sa["pending"]:
        np.testing.assert_array_equal(sa["pending"][k], sb["pending"][k], err_msg=f"pending {k}")
    assert sa["clock"] == sb["clock"] and sa["totals"] == sb["totals"]
    np.testing.assert_array_equal(a.pull(UNIVERSE, train=False), b.pull(UNIVERSE, train=False))


ops = st.lists(
    st.one_of(
        st.tuples(st.just("pull"), st.lists(st.sampled_from(list(UNIVERSE)), max_size=10)),
        st.tuples(st.just("push"), st.lists(st.sampled_from(list(UNIVERSE)), max_size=10)),
        st.tuples(st.just("shrink")),
        st.tuples(st.just("advance")),
        st.tuples(st.just("delta")),
    ),
    max_size=30,
)


@pytest.mark.parametrize("shards, load_shards", [(1, 1), (2, 2), (2, 3)])
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(history=ops)
def test_base_plus_deltas_reproduce_the_live_table(tmp_path_factory, shards, load_shards, history):
    root = tmp_path_factory.mktemp("snaps")
    live = hs.EmbeddingTable(CFG) if shards == 1 else hs.ShardedTable(CFG, shards)
    rng = np.random.default_rng(0)
    paths = [str(root / "base")]
    last = snap.save(live, paths[0], "base")
    for op in history:
        ids = np.array(op[1], np.int64) if len(op) > 1 else None
        if op[0] == "pull":
            live.pull(ids, train=True, shows=rng.integers(1, 4, len(ids)).astype(np.float32))
        elif op[0] == "push":
            live.push(ids, rng.normal(size=(len(ids), 3)).astype(np.float32),
                      clicks=rng.integers(0, 2, len(ids)))  # fmt: skip
        elif op[0] == "shrink":
            live.shrink()
        elif op[0] == "advance":
            live.advance_clock()
        else:
            paths.append(str(root / f"delta{len(paths)}"))
            last = snap.save(live, paths[-1], "delta", last)
    paths.append(str(root / f"delta{len(paths)}"))
    snap.save(live, paths[-1], "delta", last)
    restored = snap.load(paths, CFG, shards=load_shards)
    if load_shards == shards:
        assert_same(live, restored)
    else:  # resharded: same rows, weights, state and pending; totals summed
        sa, sb = full_state(live), full_state(restored)
        for k in sa["rows"]:
            np.testing.assert_array_equal(sa["rows"][k], sb["rows"][k])
        np.testing.assert_array_equal(sa["pending"]["key"], sb["pending"]["key"])


def test_delta_is_proportional_to_changed_rows(tmp_path):
    t = hs.EmbeddingTable(hs.TableConfig("t", 8))
    keys = np.arange(20_000, dtype=np.int64)
    t.pull(keys, train=True)
    base = snap.save(t, str(tmp_path / "base"), "base")
    t.push(keys[:200], np.ones((200, 8), np.float32))  # 1% of the rows
    delta = snap.save(t, str(tmp_path / "d1"), "delta", base)
    size = lambda m: sum(f["bytes"] for f in m["files"].values())  # noqa: E731
    assert delta["rows"] == 200 and size(delta) <= 0.02 * size(base)


def _base(tmp_path):
    t = hs.EmbeddingTable(CFG)
    t.pull(UNIVERSE, train=True)
    t.pull(UNIVERSE, train=True)
    path = str(tmp_path / "base")
    return t, path, snap.save(t, path, "base")


@pytest.mark.parametrize("damage", ["flip", "truncate", "remove"])
def test_damaged_file_is_detected(tmp_path, damage):
    _, path, _ = _base(tmp_path)
    f = os.path.join(path, "rows.emb.npy")
    data = bytearray(open(f, "rb").read())
    if damage == "flip":
        data[-1] ^= 0x01
        open(f, "wb").write(bytes(data))
    elif damage == "truncate":
        open(f, "wb").write(bytes(data[:-4]))
    else:
        os.remove(f)
    with pytest.raises(snap.SnapshotError, match="rows.emb.npy"):
        snap.load([path], CFG)


def test_uncommitted_broken_chain_and_wrong_table_are_refused(tmp_path):
    t, path, base = _base(tmp_path)
    os.makedirs(tmp_path / "half")
    with pytest.raises(snap.SnapshotError, match="never committed"):
        snap.load([str(tmp_path / "half")], CFG)
    d1 = snap.save(t, str(tmp_path / "d1"), "delta", base)
    snap.save(t, str(tmp_path / "d2"), "delta", d1)
    with pytest.raises(snap.SnapshotError, match="chain is broken"):
        snap.load([path, str(tmp_path / "d2")], CFG)
    with pytest.raises(snap.SnapshotError, match="written for table"):
        snap.load([path], hs.TableConfig("t", 4, optimizer=opt.adam(0.05)))
    with pytest.raises(snap.SnapshotError, match="already holds"):
        snap.save(t, path, "base")


def test_serving_export_filters_and_halves(tmp_path):
    t = hs.EmbeddingTable(hs.TableConfig("t", 4, initializer=hs.uniform(0.5)))
    t.pull(np.array([1, 1, 1, 2], np.int64), train=True)  # show 3 and 1
    m = snap.save(t, str(tmp_path / "serve"), "serving", min_score=0.2, float16=True)
    keys, w = snap.load_serving(str(tmp_path / "serve"))
    assert m["rows"] == 1 and keys.tolist() == [1] and w.dtype == np.float16
    np.testing.assert_allclose(w[0], t.pull(np.array([1], np.int64), train=False)[0], atol=1e-3)


def test_compaction_folds_a_chain_into_one_base(tmp_path):
    t = hs.EmbeddingTable(CFG)
    paths = [str(tmp_path / "base")]
    last = snap.save(t, paths[0], "base")
    rng = np.random.default_rng(3)
    for i in range(4):
        ids = rng.choice(UNIVERSE, 8)
        t.pull(ids, train=True)
        t.push(ids, rng.normal(size=(8, 3)).astype(np.float32))
        t.advance_clock()
        t.shrink()
        paths.append(str(tmp_path / f"d{i}"))
        last = snap.save(t, paths[-1], "delta", last)
    m = snap.compact(paths, str(tmp_path / "compacted"))
    assert m["kind"] == "base"
    assert_same(snap.load(paths, CFG), snap.load([str(tmp_path / "compacted")], CFG))
    # The script does the same; a chain out of order or a taken --out is one error line.
    script = os.path.join(REPO, "experiments", "compact_snapshots.py")
    cases = [
        (paths, "cli", 0, None),
        (paths[1:], "bad", 1, f"error: {paths[1]}: expected a base snapshot, found delta"),
        (paths, "cli", 1, f"error: {tmp_path / 'cli'} already holds a committed snapshot"),
    ]
    for chain, out, code, error in cases:
        proc = subprocess.run([sys.executable, script, f"--out={tmp_path / out}", *chain],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert proc.returncode == code, proc.stderr[-2000:]
        assert (proc.stderr.strip() or None) == error
    assert_same(snap.load(paths, CFG), snap.load([str(tmp_path / "cli")], CFG))
    assert not (tmp_path / "bad").exists()


def test_columns_take_the_optimizer_state_names_and_old_positional_names_still_load(tmp_path):
    t = hs.EmbeddingTable(CFG)
    keys = UNIVERSE[:6]
    for _ in range(2):
        t.pull(keys, train=True)
    t.push(keys, np.ones((6, 3), np.float32))
    m = snap.save(t, str(tmp_path / "new"), "base")
    assert {"rows.mu.npy", "rows.nu.npy", "rows.count.npy"} <= set(m["files"])
    # A snapshot written before the states had names (rows.state_0.npy, ... in field order)
    # and before rows had a delta score (rows.updates.npy, a push count).
    old = tmp_path / "old"
    old.mkdir()
    files = {}
    for name, meta in m["files"].items():
        new_name = name
        for i, field in enumerate(("mu", "nu", "count")):
            new_name = new_name.replace(f"rows.{field}.npy", f"rows.state_{i}.npy")
        if name == "rows.delta_score.npy":
            new_name = "rows.updates.npy"
            buf = io.BytesIO()
            np.save(buf, np.ones(len(keys), np.uint32))
            (old / new_name).write_bytes(buf.getvalue())
            meta = {**meta, "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
                    "bytes": len(buf.getvalue()), "dtype": "<u4"}  # fmt: skip
        else:
            shutil.copy(tmp_path / "new" / name, old / new_name)
        files[new_name] = meta
    old_manifest = {k: v for k, v in m.items() if k != "sha256"}  # older ones had none
    (old / "manifest.json").write_text(json.dumps({**old_manifest, "files": files}))
    loaded = snap.load([str(old)], CFG)
    st = loaded.row_stats(keys)
    assert st["present"].sum() == len(loaded) > 0
    assert (st["delta_score"][st["present"]] == 0).all()  # it starts at 0
    t.export_serving(delta_threshold=0.0)  # which sets the live table's to 0 too
    assert_same(loaded, t)


def test_a_key_evicted_twice_between_snapshots_frees_its_slot_once(tmp_path):
    """Evicted, re-admitted, evicted again: the delta lists it once, and the load frees its
    slot once (twice would hand it to two new keys)."""
    cfg = hs.TableConfig("t", 3, eviction=hs.Eviction(max_rows=1), seed=1)
    t = hs.EmbeddingTable(cfg)
    t.pull(np.array([1, 2], np.int64), train=True)
    base = snap.save(t, str(tmp_path / "base"), "base")
    for _ in range(2):  # key 2 loses to key 1 (more shows) both times
        t.pull(np.array([1, 1, 2], np.int64), train=True)
        t.shrink()
    t.pull(np.array([3, 4], np.int64), train=True)  # two new keys take free slots
    snap.save(t, str(tmp_path / "d1"), "delta", base)
    assert_same(snap.load([str(tmp_path / "base"), str(tmp_path / "d1")], cfg), t)


def test_a_deleted_key_listed_twice_frees_its_slot_once():
    """Snapshots list each deleted key once; a load given one twice still frees its slot
    once (freed twice, the slot would go to two new keys, the first one's row lost)."""
    t = hs.EmbeddingTable(hs.TableConfig("t", 3, seed=1))
    t.pull(np.array([1, 2], np.int64), train=True)
    t.apply_snapshot({"key": np.empty(0, np.int64)}, np.array([2, 2], np.int64),
                     t.export_pending(), t.export_scalars())  # fmt: skip
    t.pull(np.array([3, 4], np.int64), train=True)
    assert sorted(t.export_rows()["key"]) == [1, 3, 4] and len(t) == 3


def test_an_edited_manifest_scalar_is_detected(tmp_path):
    t = hs.EmbeddingTable(CFG)
    t.pull(UNIVERSE[:4], train=True)
    t.advance_clock(3)
    snap.save(t, str(tmp_path / "base"), "base")
    path = tmp_path / "base" / "manifest.json"
    path.write_text(path.read_text().replace('"clock": 3', '"clock": 4'))
    with pytest.raises(snap.SnapshotError, match="manifest was altered"):
        snap.load([str(tmp_path / "base")], CFG)


def _rows_by_key(table) -> dict[str, np.ndarray]:
    return full_state(table)["rows"]


def test_a_side_export_between_base_and_delta_hides_nothing(tmp_path):
    t = hs.EmbeddingTable(CFG)
    keys = UNIVERSE[:8]
    for _ in range(2):
        t.pull(keys, train=True)
    base = snap.save(t, str(tmp_path / "base"), "base")
    t.push(keys, np.ones((8, 3), np.float32))
    snap.save(t, str(tmp_path / "other-base"), "base")  # another chain's base
    snap.save(t, str(tmp_path / "serving"), "serving")  # and a serving export
    t.push(keys[:3], np.ones((3, 3), np.float32))
    snap.save(t, str(tmp_path / "delta"), "delta", base)
    assert_same(snap.load([str(tmp_path / "base"), str(tmp_path / "delta")], CFG), t)


@pytest.mark.parametrize("other_cuts, refused", [(0, False), (GENERATIONS, False),
                                                 (GENERATIONS + 1, True)])  # fmt: skip
def test_a_delta_on_a_parent_older_than_the_change_log_is_refused(tmp_path, other_cuts,
                                                                   refused):  # fmt: skip
    """The table logs evictions and shrink decays for GENERATIONS cuts: a delta on a parent
    with that many other cuts since still carries them (base + delta == live); one on an older
    parent, or on a generation before the one a table was loaded at, is refused, never
    written without the evictions it cannot know."""
    t = hs.EmbeddingTable(CFG)
    for _ in range(2):
        t.pull(UNIVERSE[:8], train=True)
    base = snap.save(t, str(tmp_path / "base"), "base")
    t.pull(UNIVERSE[8:], train=True)
    t.pull(UNIVERSE[8:], train=True)
    t.shrink()  # over max_rows: evicts right after the base's cut, logged with a decay
    assert t.totals["evicted"] > 0
    for i in range(other_cuts):  # other chains' bases between, each a cut of its own
        snap.save(t, str(tmp_path / f"other{i}"), "base")
    if refused:
        with pytest.raises(ValueError, match="older than the change log.*take a base"):
            snap.save(t, str(tmp_path / "delta"), "delta", base)
        return
    delta = snap.save(t, str(tmp_path / "delta"), "delta", base)
    loaded = snap.load([str(tmp_path / "base"), str(tmp_path / "delta")], CFG)
    assert_same(loaded, t)
    with pytest.raises(ValueError, match="take a base"):  # evictions before its load: unknown
        snap.save(loaded, str(tmp_path / "from-loaded"), "delta", base)
    snap.save(loaded, str(tmp_path / "from-loaded"), "delta", delta)


@pytest.mark.parametrize("shards", [1, 3])
def test_snapshots_taken_while_another_thread_pushes_lose_nothing(tmp_path, shards):
    import threading

    cfg = hs.TableConfig("t", 4, optimizer=opt.adagrad(0.1), admission=hs.count_filter(2),
                         eviction=hs.Eviction(max_rows=300, shrink_decay=0.9))  # fmt: skip
    live = hs.EmbeddingTable(cfg) if shards == 1 else hs.ShardedTable(cfg, shards)
    stop = threading.Event()

    def writer():
        rng = np.random.default_rng(1)
        while not stop.is_set():
            ids = np.unique(rng.integers(0, 1000, 200))
            live.pull(ids, train=True)
            live.push(ids, rng.normal(size=(len(ids), 4)).astype(np.float32),
                      clicks=rng.integers(0, 2, len(ids)), assume_unique=True)  # fmt: skip

    th = threading.Thread(target=writer)
    th.start()
    paths = chain_while_writing(live, tmp_path, stop, [th])
    assert_same(snap.load(paths, cfg, shards=shards), live)


def chain_while_writing(live, root, stop, writers) -> list[str]:
    """A base and six deltas of ``live`` (a shrink before the fourth) while ``writers``
    run, then stops them and takes a last delta; returns the chain's paths."""
    paths = [str(root / "base")]
    last = snap.save(live, paths[0], "base")
    for i in range(6):
        if i == 3:
            live.shrink()
        paths.append(str(root / f"d{i}"))
        last = snap.save(live, paths[-1], "delta", last)
    stop.set()
    for th in writers:
        th.join()
    paths.append(str(root / "final"))
    snap.save(live, paths[-1], "delta", last)
    return paths
