"""The disk tier: a table whose RAM holds a few rows computes exactly what an all-RAM table
computes (pulls, statistics, admission, eviction over both tiers, exports, snapshots)."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest

import hoststore as hs
from hoststore import optimizers as opt
from hoststore import snapshot as snap
from hoststore.disk_tier import DiskTier
from hoststore.table import top_rows
from tests.hoststore.test_snapshot import assert_same, chain_while_writing, full_state
from tests.hoststore.test_table_model import CONFIGS

KEYS = np.array([0, -1, 1, 2**63 - 1, -(2**63), *range(5, 60)], np.int64)


def _history(seed: int, steps: int = 60):
    """A random stream of operations: pulls (repeated ids, shows), pushes (with and without
    the unique promise), clicks, clock ticks, shrinks."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = KEYS[rng.zipf(1.4, rng.integers(1, 25)) % len(KEYS)]
        shows = rng.integers(1, 3, len(ids)).astype(np.float32)
        grads = rng.normal(size=(len(ids), 3)).astype(np.float32)
        clicks = rng.integers(0, 2, len(ids)).astype(np.float32)
        yield ("pull", ids, shows)
        u = rng.random()
        if u < 0.4:
            yield ("push", ids, grads, clicks)
        elif u < 0.8:
            uniq = np.unique(ids)
            yield ("pull", uniq, np.ones(len(uniq), np.float32))
            yield ("push_unique", uniq, grads[: len(uniq)], clicks[: len(uniq)])
        if rng.random() < 0.15:
            yield ("advance",)
        if rng.random() < 0.08:
            yield ("shrink",)


def _apply(table, op):
    if op[0] == "pull":
        return table.pull(op[1], train=True, shows=op[2])
    if op[0] == "push":
        return table.push(op[1], op[2], clicks=op[3])
    if op[0] == "push_unique":
        return table.push(op[1], op[2], clicks=op[3], assume_unique=True)
    if op[0] == "advance":
        return table.advance_clock()
    return table.shrink()


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("ram_rows", [1, 4])
def test_a_tiered_table_equals_an_all_ram_table(tmp_path, name, ram_rows):
    cfg = CONFIGS[name]
    ram = hs.EmbeddingTable(cfg)
    tiered = hs.EmbeddingTable(cfg, tier=DiskTier(str(tmp_path), max_rows=ram_rows))
    cold_seen = 0
    for step, op in enumerate(_history(seed=len(name) + ram_rows)):
        got = _apply(tiered, op)
        want = _apply(ram, op)
        if op[0] in ("pull", "shrink"):
            np.testing.assert_array_equal(got, want, err_msg=f"step {step}: {op[0]}")
        if step % 7 == 0:  # reads: Paddle's CVM columns and the statistics
            a, b = (t.pull(KEYS, train=False, with_counts=True) for t in (tiered, ram))
            np.testing.assert_array_equal(a, b)
        cold_seen = max(cold_seen, tiered.stats()["disk_rows"])
    assert cold_seen > 0, "the test never put a row on disk"
    assert_same(ram, tiered)
    for k, v in ram.row_stats(KEYS).items():
        np.testing.assert_array_equal(tiered.row_stats(KEYS)[k], v, err_msg=k)
    np.testing.assert_array_equal(np.sort(tiered.evicted_keys()), np.sort(ram.evicted_keys()))
    assert len(tiered) == len(ram)
    tiered.close()


def _xbox(table):
    rows = table.export_serving(min_score=0.5, max_unseen=3, delta_threshold=0.2)
    order = np.argsort(rows["key"])
    return rows["key"][order], rows["emb"][order]


@pytest.mark.parametrize("reserve", [True, False])
def test_rows_faulted_in_land_in_the_columns_as_they_are_after_growth(tmp_path, monkeypatch,
                                                                       reserve):  # fmt: skip
    """Rows come back from disk while the table grows (in place, or copied to new memory
    when none can be reserved): every value equals an all-RAM table's."""
    from hoststore import _row_storage

    if not reserve:
        monkeypatch.setattr(_row_storage, "_reserve", lambda nbytes: None)
    cfg = hs.TableConfig("t", dim=3, initial_capacity=16, optimizer=opt.adagrad(0.1))
    ram = hs.EmbeddingTable(cfg)
    tiered = hs.EmbeddingTable(cfg, tier=DiskTier(str(tmp_path), max_rows=40))
    rng = np.random.default_rng(5)
    for step in range(60):  # new keys grow the table; old ones come back from disk
        ids = np.unique(rng.integers(0, 30 * (step + 1), 50))
        for t in (ram, tiered):
            t.pull(ids, train=True)
            t.push(ids, np.ones((len(ids), 3), np.float32), assume_unique=True)
        a, b = (t.pull(ids, train=False, with_counts=True) for t in (tiered, ram))
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
    assert tiered.stats()["faulted_in"] > 100 and tiered.growth["resizes"] > 1
    assert (tiered.growth["row_copies"] > 0) == (not reserve)
    tiered.close()


def test_exports_cover_both_tiers(tmp_path):
    cfg = CONFIGS["paddle_rowwise_decay_unseen"]
    ram = hs.EmbeddingTable(cfg)
    tiered = hs.EmbeddingTable(cfg, tier=DiskTier(str(tmp_path), max_rows=3))
    for op in _history(seed=5, steps=40):
        _apply(ram, op), _apply(tiered, op)
    assert tiered.stats()["disk_rows"] > 0
    for _ in range(2):  # the second export emits only what the first reset and was pushed
        for a, b in zip(_xbox(ram), _xbox(tiered), strict=True):
            np.testing.assert_array_equal(a, b)
        ids = KEYS[:20]
        for t in (ram, tiered):
            t.pull(ids, train=True)
            t.push(ids, np.ones((20, 3), np.float32))
    for fraction in (0.3, 1.0):
        a, b = top_rows([ram], fraction), top_rows([tiered], fraction)
        oa, ob = np.argsort(a["key"]), np.argsort(b["key"])
        for k in a:
            np.testing.assert_array_equal(a[k][oa], b[k][ob], err_msg=k)
    assert_same(ram, tiered)


def _top_reference(tables, fraction):
    """Every row gathered and sorted (the cache export before it ranked in two scans)."""
    parts = [c for t in tables for c in t._shows_now(with_weights=True)]
    rows = {k: np.concatenate([p[k] for p in parts]) for k in ("key", "emb", "show_now")}
    top = np.lexsort((rows["key"], -rows["show_now"]))
    top = np.sort(top[: int(round(fraction * len(top)))])
    return {"key": rows["key"][top], "emb": rows["emb"][top]}


@pytest.mark.parametrize("shards", [1, 3])
@pytest.mark.parametrize("tiered", [False, True])
@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.25, 0.5, 1.0])
def test_a_cache_export_ranks_like_a_full_sort(tmp_path, shards, tiered, fraction):
    """The top fraction by shows, ties (many: shows are small integers) to the smaller
    key, in the tables' row order, against gathering and sorting every row."""
    rng = np.random.default_rng(shards)
    cfg = hs.TableConfig("t", 2, eviction=hs.Eviction(decay=0.9))
    tier = DiskTier(str(tmp_path), max_rows=300) if tiered else None
    table = (hs.ShardedTable(cfg, shards, tier=tier) if shards > 1
             else hs.EmbeddingTable(cfg, tier=tier))  # fmt: skip
    keys = rng.choice(2**40, 3_000, replace=False)
    for step in range(6):
        ids = keys[rng.random(len(keys)) < 0.4]
        table.pull(ids, train=True, shows=rng.integers(1, 4, len(ids)).astype(np.float32))
        table.advance_clock(step % 2)
    parts = table.shards if shards > 1 else [table]
    assert not tiered or sum(p.stats()["disk_rows"] for p in parts) > 1_000
    got, want = top_rows(parts, fraction), _top_reference(parts, fraction)
    np.testing.assert_array_equal(got["key"], want["key"])
    np.testing.assert_array_equal(got["emb"], want["emb"])
    assert len(got["key"]) == round(fraction * len(table))


MAX_ROWS_CFG = hs.TableConfig(
    "t", 3, optimizer=opt.adam(0.05), admission=hs.count_filter(2, max_pending=5),
    eviction=hs.Eviction(decay=0.9, unseen_ticks=4, max_rows=20, shrink_decay=0.95), seed=4,
)  # fmt: skip


@pytest.mark.parametrize("load_tier", [False, True])
def test_base_plus_deltas_of_a_tiered_table_reproduce_it(tmp_path, load_tier):
    """A chain written from both tiers (with a side export in between, which sends the next
    delta to a disk scan) loads into an all-RAM or a tiered table; the reverse holds too."""
    tier = DiskTier(str(tmp_path / "tier"), max_rows=5)
    live = hs.EmbeddingTable(MAX_ROWS_CFG, tier=tier)
    ram = hs.EmbeddingTable(MAX_ROWS_CFG)
    paths = [str(tmp_path / "base")]
    last = snap.save(live, paths[0], "base")
    for i, op in enumerate(_history(seed=9, steps=80)):
        _apply(live, op), _apply(ram, op)
        if i % 15 == 14:
            if i % 30 == 29:
                snap.save(live, str(tmp_path / f"side{i}"), "base")
            paths.append(str(tmp_path / f"delta{i}"))
            last = snap.save(live, paths[-1], "delta", last)
            assert_same(live, snap.load(paths, MAX_ROWS_CFG))  # every prefix of the chain
    paths.append(str(tmp_path / "last"))
    snap.save(live, paths[-1], "delta", last)
    assert live.stats()["disk_rows"] > 0
    restored = snap.load(paths, MAX_ROWS_CFG, tier=DiskTier(str(tmp_path / "t2"), max_rows=3)
                         if load_tier else None)  # fmt: skip
    assert_same(live, restored)
    assert_same(ram, restored)
    # and an all-RAM table's base loads into a tiered one, spilled down to its budget
    snap.save(ram, str(tmp_path / "ram-base"), "base")
    small = snap.load([str(tmp_path / "ram-base")], MAX_ROWS_CFG,
                      tier=DiskTier(str(tmp_path / "t3"), max_rows=4))  # fmt: skip
    assert small.stats()["ram_rows"] <= 4 < len(small)
    assert_same(ram, small)


@pytest.mark.parametrize("shards", [1, 3])
def test_snapshots_of_a_tiered_table_under_concurrent_writers_lose_nothing(tmp_path, shards):
    cfg = hs.TableConfig("t", 4, optimizer=opt.adagrad(0.1), admission=hs.count_filter(2),
                         eviction=hs.Eviction(max_rows=600, shrink_decay=0.9))  # fmt: skip
    tier = DiskTier(str(tmp_path / "tier"), max_rows=90)
    live = snap.new_table(cfg, shards, tier)
    stop, warm = threading.Event(), threading.Barrier(3)

    def writer(seed):
        rng = np.random.default_rng(seed)
        for i in range(10**9):
            if i == 5:
                warm.wait()  # rows are on disk before the first snapshot
            if stop.is_set():
                break
            ids = np.unique(rng.integers(0, 1000, 200))
            live.pull(ids, train=True)
            live.push(ids, rng.normal(size=(len(ids), 4)).astype(np.float32),
                      clicks=rng.integers(0, 2, len(ids)), assume_unique=True)  # fmt: skip

    threads = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    for th in threads:
        th.start()
    warm.wait()
    paths = chain_while_writing(live, tmp_path, stop, threads)
    assert live.stats()["disk_rows"] > live.stats()["ram_rows"]
    assert_same(snap.load(paths, cfg, shards=shards), live)
    live.close()


def test_the_tier_is_scratch_and_its_directories_are_cleaned(tmp_path):
    import socket

    host = "".join(c if c.isalnum() or c in "-_." else "_" for c in socket.gethostname())
    stale = tmp_path / f"hoststore-tier-999999999@{host}@t-dead"  # a killed process's
    stale.mkdir()
    (stale / "000001.sst").write_bytes(b"x")
    keep = tmp_path / "someone-elses"
    elsewhere = tmp_path / "hoststore-tier-999999999@another-host@t-x"  # not ours to judge
    for d in (keep, elsewhere):
        d.mkdir()
    t = hs.EmbeddingTable(CONFIGS["always_adagrad_unseen"],
                          tier=DiskTier(str(tmp_path), max_rows=1))  # fmt: skip
    t.pull(KEYS, train=True)
    assert not stale.exists() and keep.exists() and elsewhere.exists()
    mine = [p for p in os.listdir(tmp_path) if p.startswith(f"hoststore-tier-{os.getpid()}@")]
    st = t.stats()
    assert len(mine) == 1 and st["disk_rows"] == len(KEYS) - 1 and st["key_filter_bytes"] > 0
    assert st["spilled"] >= len(KEYS) - 1 and st["ram_rows"] == 1
    t.close()
    assert not (tmp_path / mine[0]).exists()


def test_bad_settings_are_refused(tmp_path):
    for bad in ({}, {"memory_mb": 1, "max_rows": 2}, {"memory_mb": 0}, {"max_rows": 0},
                {"max_rows": 1, "read_threads": 0}):  # fmt: skip
        with pytest.raises(ValueError):
            DiskTier(str(tmp_path), **bad)
    with pytest.raises(ValueError):
        DiskTier("", max_rows=1)
    # a memory budget becomes rows at the table's bytes per row; shards split it
    t = hs.EmbeddingTable(CONFIGS["always_adagrad_unseen"],
                          tier=DiskTier(str(tmp_path), memory_mb=1))  # fmt: skip
    assert 0 < t.max_ram_rows * t.stats()["bytes_per_row_at_capacity"] <= 1 << 20
    assert DiskTier("d", memory_mb=8).split(4).memory_mb == 2
    t.close()


def test_the_key_filter_never_forgets_a_key_on_disk_and_is_rebuilt_when_stale(tmp_path):
    from hoststore._bloom import KeyFilter
    from hoststore.disk_tier import ColdRows

    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, 300_000, dtype=np.int64))
    f = KeyFilter()
    f.add(keys[:200_000])  # grows by layers
    assert f.may_contain(keys[:200_000]).all() and f.may_contain(keys[200_000:]).mean() < 0.1
    cold = ColdRows(str(tmp_path), "t", np.dtype([("v", "<f4")]))
    rec = np.zeros(len(keys), cold.dtype)
    rec["v"] = np.arange(len(keys))
    for lo in range(0, len(keys), 50_000):  # several layers: rebuilt into one past the limit
        cold.put(keys[lo : lo + 50_000], rec[lo : lo + 50_000])
    cold.delete(keys[:250_000])  # mostly stale: rebuilt from the keys left
    assert cold.filter.layers == 1 and cold.filter.may_contain(keys[:250_000]).mean() < 0.1
    found, got = cold.get(keys)
    np.testing.assert_array_equal(found, np.arange(len(keys)) >= 250_000)
    np.testing.assert_array_equal(got["v"], rec["v"][250_000:])
    cold.close()


def test_cold_rows_equal_a_dict_model_through_merges_freezes_and_scans(tmp_path):
    """Random puts (new and rewrites), takes, deletes, gets, and scans while frozen, against
    a dict of key -> record; small runs, so merges and rewrites of mostly dead runs happen."""
    from hoststore.disk_tier import ColdRows

    rng = np.random.default_rng(7)
    dtype = np.dtype([("v", "<f4", (3,)), ("gen", "<u2")])  # 14 bytes: padded to words
    cold = ColdRows(str(tmp_path), "t", dtype)
    assert cold.dtype.itemsize == 16 and cold.dtype.names == dtype.names
    model: dict[int, tuple] = {}
    universe = np.unique(np.concatenate([KEYS, rng.integers(-(2**63), 2**63 - 1, 3000)]))

    def record(keys):
        rec = np.zeros(len(keys), dtype)
        rec["v"] = rng.normal(size=(len(keys), 3))
        rec["gen"] = rng.integers(0, 100, len(keys))
        return rec

    def check(keys, found, rec):
        """The keys on disk found, a key twice found once (its first occurrence)."""
        first = np.zeros(len(keys), bool)
        first[np.unique(keys, return_index=True)[1]] = True
        want = np.array([int(k) in model for k in keys]) & first
        np.testing.assert_array_equal(found, want)
        for k, r in zip(keys[found], rec.astype(dtype), strict=True):
            assert r.tobytes() == model[int(k)], k

    max_runs = 0
    for step in range(400):
        op = rng.random()
        keys = rng.permutation(universe)[: rng.integers(1, 200)]
        on_disk = np.array([int(k) in model for k in keys], bool)
        if op < 0.35:  # spill: keys not on disk
            new = keys[~on_disk]
            rec = record(new)
            cold.put(new, rec)
            model.update({int(k): r.tobytes() for k, r in zip(new, rec, strict=True)})
            cold.compact()
        elif op < 0.45:  # rewrite of keys on disk
            old = keys[on_disk]
            rec = record(old)
            cold.put(old, rec, new=False)
            model.update({int(k): r.tobytes() for k, r in zip(old, rec, strict=True)})
        elif op < 0.65:  # (some keys twice)
            keys = np.concatenate([keys, keys[: rng.integers(0, 3)]])
            check(keys, *cold.take(keys))
            for k in keys:
                model.pop(int(k), None)
        elif op < 0.75:
            cold.delete(keys[on_disk])
            for k in keys[on_disk]:
                model.pop(int(k))
        elif op < 0.9:
            check(keys, *cold.get(keys))
        else:  # a snapshot: the scan sees the tier as frozen, whatever moves meanwhile
            cold.freeze()
            n_frozen = len(cold._runs)
            frozen = dict(model)
            keys = np.concatenate([keys, keys[:2]])
            check(keys, *cold.take(keys))  # faulted in while the snapshot reads
            for k in keys:
                model.pop(int(k), None)
            old = np.array(list(model)[:30], np.int64)  # rewritten meanwhile (an export)
            rec = record(old)
            cold.put(old, rec, new=False)
            model.update({int(k): r.tobytes() for k, r in zip(old, rec, strict=True)})
            check(old, *cold.get(old))  # the newest version
            seen = {}
            for k, rec in cold.scan(50):
                rec = rec.astype(dtype)
                seen.update({int(a): b.tobytes() for a, b in zip(k, rec, strict=True)})
            assert seen == frozen
            cold.compact()  # waits for the thaw
            assert len(cold._runs) >= n_frozen
            cold.thaw()
            cold.compact()
        assert len(cold) == len(model), step
        max_runs = max(max_runs, len(cold._runs))
    got = {int(k): r.tobytes() for ks, rs in cold.scan(64)
           for k, r in zip(ks, rs.astype(dtype), strict=True)}  # fmt: skip
    assert got == model
    assert 1 < max_runs < 20 and sum(r.n for r in cold._runs) < 2 * len(model) + 400
    cold.close()


def test_records_that_die_while_a_merge_reads_them_die_in_the_merged_run(tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """A merge held on its thread while keys of its runs are taken, deleted and rewritten:
    once installed, every key is alive exactly once, with its newest record."""
    from hoststore import _sorted_runs
    from hoststore.disk_tier import ColdRows

    started, release = threading.Event(), threading.Event()
    real = _sorted_runs.RunWriter.finish

    def held(self):  # the merge has read its runs and written the merged one: it waits
        if threading.current_thread().name.startswith("hoststore-tier-merge"):
            started.set()
            release.wait(30)
        return real(self)

    monkeypatch.setattr(_sorted_runs.RunWriter, "finish", held)
    cold = ColdRows(str(tmp_path), "t", np.dtype([("v", "<i8")]))
    keys = np.arange(4000, dtype=np.int64)

    def rec(ks, scale):
        r = np.zeros(len(ks), cold.dtype)
        r["v"] = ks * scale
        return r

    for lo in range(0, 4000, 1000):  # four runs of one size class: a merge starts
        cold.put(keys[lo : lo + 1000], rec(keys[lo : lo + 1000], 10))
        cold.compact()
    assert started.wait(30) and len(cold._runs) == 4
    taken = keys[::7]
    assert cold.take(taken)[0].all()
    deleted = np.setdiff1d(keys[3::11], taken)
    cold.delete(deleted)
    rewritten = np.setdiff1d(keys[5::13], np.concatenate([taken, deleted]))
    cold.put(rewritten, rec(rewritten, -1), new=False)
    cold.compact()  # (the merge still runs: nothing changes)
    assert len(cold._runs) == 5
    release.set()
    cold.settle()
    assert len(cold._runs) == 2  # the merged run, the rewrites' run
    model = {int(k): int(k) * 10 for k in np.setdiff1d(keys, np.concatenate([taken, deleted]))}
    model.update({int(k): -int(k) for k in rewritten})
    seen: dict[int, int] = {}
    for ks, recs in cold.scan(512):
        for k, v in zip(ks.tolist(), recs["v"].tolist(), strict=True):
            assert k not in seen, k  # alive once
            seen[k] = v
    assert seen == model
    assert len(cold) == len(model) == sum(r.live for r in cold._runs)
    found, got = cold.get(keys)
    np.testing.assert_array_equal(found, np.isin(keys, list(model)))
    np.testing.assert_array_equal(got["v"], [model[int(k)] for k in keys[found]])
    cold.close()


@pytest.mark.parametrize("read_threads", [1, 3])
def test_cold_rows_read_a_large_batch_in_parallel_ranges(tmp_path, read_threads):
    """A batch of thousands of keys (split over the reading threads) across several runs,
    present, absent and moved out, against the records written."""
    from hoststore.disk_tier import ColdRows

    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(-(2**63), 2**63 - 1, 40_000))
    dtype = np.dtype([("v", "<i8"), ("w", "<f4", (2,))])
    rec = np.zeros(len(keys), dtype)
    rec["v"] = keys * 3
    rec["w"] = rng.normal(size=(len(keys), 2))
    cold = ColdRows(str(tmp_path), "t", dtype, read_threads=read_threads)
    for lo in range(0, len(keys), 7_000):
        cold.put(keys[lo : lo + 7_000], rec[lo : lo + 7_000])
    assert len(cold._runs) > 1
    gone = keys[::5]
    found, _ = cold.take(np.concatenate([gone, gone[:500]]))  # some twice: found once
    assert found[: len(gone)].all() and not found[len(gone) :].any()
    assert len(cold) == len(keys) - len(gone)
    want = rng.permutation(np.concatenate([keys[:12_000], rng.integers(0, 2**40, 3_000)]))
    found, got = cold.get(want)
    expect = np.isin(want, keys) & ~np.isin(want, gone)
    np.testing.assert_array_equal(found, expect)
    np.testing.assert_array_equal(got, rec[np.searchsorted(keys, want[found])])
    cold.close()


@pytest.mark.parametrize(("source", "match"), [("empty file", "short"),
                                               ("directory", "Is a directory")])  # fmt: skip
def test_a_failed_read_of_a_run_raises_and_says_why(tmp_path, source, match):
    import errno

    from hoststore.disk_tier import ColdRows

    cold = ColdRows(str(tmp_path / "tier"), "t", np.dtype([("v", "<f4")]))
    keys = np.arange(100, dtype=np.int64)
    cold.put(keys, np.zeros(100, cold.dtype))
    run = cold._runs[0]
    (tmp_path / "empty").write_bytes(b"")
    path = tmp_path / "empty" if source == "empty file" else tmp_path
    good, run._fd = run._fd, os.open(path, os.O_RDONLY)
    cold._run_set = None  # (the lookups' table of files is built again)
    with pytest.raises(OSError, match=match) as e:
        cold.get(keys)
    assert e.value.errno == (errno.EISDIR if source == "directory" else 0)
    os.close(run._fd)
    run._fd, cold._run_set = good, None
    assert cold.get(keys)[0].all()
    cold.close()


@pytest.mark.parametrize("keep_even", [False, True])
def test_chains_of_two_shards_load_through_tiered_tables_only(tmp_path, monkeypatch, keep_even):
    """Two parts' chains (base + delta each, written from tiered tables) load into 3 tiered
    shards, each chain rebuilt in a tiered table of its own (no all-RAM table on the way),
    and equal the same load into all-RAM tables."""
    parts = [hs.EmbeddingTable(MAX_ROWS_CFG, tier=DiskTier(str(tmp_path / f"p{i}"), max_rows=4))
             for i in range(2)]  # fmt: skip
    chains = [[str(tmp_path / f"base{i}")] for i in range(2)]
    bases = [snap.save(p, c[0], "base") for p, c in zip(parts, chains, strict=True)]
    for i, (p, c, b) in enumerate(zip(parts, chains, bases, strict=True)):
        for op in _history(seed=20 + i, steps=40):  # the parts' keys differ (bit 40)
            _apply(p, op if len(op) == 1 else (op[0], op[1] ^ (i << 40), *op[2:]))
        c.append(str(tmp_path / f"delta{i}"))
        snap.save(p, c[1], "delta", b)
    assert all(p.stats()["disk_rows"] > 0 for p in parts)
    keep = (lambda k: k % 2 == 0) if keep_even else None
    made = []
    init = hs.EmbeddingTable.__init__

    def record(self, config, **kw):
        made.append(kw.get("tier"))
        init(self, config, **kw)

    monkeypatch.setattr(hs.EmbeddingTable, "__init__", record)
    got = snap.load_chains(chains, MAX_ROWS_CFG, shards=3, keep=keep,
                           tier=DiskTier(str(tmp_path / "load"), max_rows=6))  # fmt: skip
    assert len(made) == 3 + 2 and None not in made  # 3 shards, a table per chain
    assert got.stats()["disk_rows"] > 0
    # the reference: the parts' own rows and pending counters, together
    states = [full_state(p) for p in parts]
    sb = full_state(got)
    for part in ("rows", "pending"):
        want = {k: np.concatenate([st[part][k] for st in states]) for k in states[0][part]}
        mask = want["key"] % 2 == 0 if keep_even else np.ones(len(want["key"]), bool)
        order = np.argsort(want["key"][mask])
        assert len(order) > (5 if part == "rows" else 0)
        for k in want:
            np.testing.assert_array_equal(want[k][mask][order], sb[part][k], err_msg=f"{part} {k}")
    assert sb["clock"] == states[0]["clock"]
    assert sb["totals"] == {k: sum(st["totals"][k] for st in states) for k in sb["totals"]}


def _ram_and_tiered(tmp_path, cfg):
    """An all-RAM table and a tiered one (1,000 rows in RAM) with the same 150K rows, a
    third of them shown twice (those pass a serving export's min_score=0.2)."""
    ram = hs.EmbeddingTable(cfg)
    tiered = hs.EmbeddingTable(cfg, tier=DiskTier(str(tmp_path / "tier"), max_rows=1_000))
    keys = np.arange(150_000, dtype=np.int64) * 7
    for t in (ram, tiered):
        for lo in range(0, len(keys), 30_000):
            t.pull(keys[lo : lo + 30_000], train=True)
        t.pull(keys[::3], train=True)
    return ram, tiered, keys


def test_a_serving_export_streams_the_cold_rows_and_holds_the_lock_only_while_read(tmp_path):
    """A tiered table's serving rows come a scan chunk at a time; an export that resets
    delta scores holds the lock until read or closed; the serving snapshot (streamed to
    its files) equals the export of an all-RAM table with the same history."""
    ram, tiered, keys = _ram_and_tiered(
        tmp_path, hs.TableConfig("t", 4, initializer=hs.uniform(0.5))
    )
    assert tiered.stats()["disk_rows"] > 2 * 65_536
    assert len(list(tiered.serving_rows(min_score=0.2))) > 2  # RAM, then cold scan chunks
    rows = tiered.serving_rows(min_score=0.2, delta_threshold=-1.0)  # (resets: all pass)
    it = iter(rows)
    assert len(next(it)["key"]) <= 1_000 and set(next(it)) == {"key", "emb"}
    done = threading.Event()
    writer = threading.Thread(target=lambda: (tiered.pull(keys[:10], train=True), done.set()))
    writer.start()
    assert not done.wait(0.5)  # the export holds the lock
    rows.close()
    assert done.wait(30)  # and closing it lets the pull in
    writer.join()
    ram.serving_rows(min_score=0.2, delta_threshold=-1.0).close()  # (started: nothing reset)
    ram.pull(keys[:10], train=True)
    counts = [snap.save(t, str(tmp_path / name), "serving", min_score=0.2, float16=True)["rows"]
              for name, t in (("ram", ram), ("tiered", tiered))]  # fmt: skip
    assert counts[0] == counts[1] == len(keys[::3]) + 6  # keys[:10] have two shows now
    (ka, wa), (kb, wb) = (snap.load_serving(str(tmp_path / n)) for n in ("ram", "tiered"))
    oa, ob = np.argsort(ka), np.argsort(kb)
    np.testing.assert_array_equal(ka[oa], kb[ob])
    np.testing.assert_array_equal(wa[oa], wb[ob])
    assert wb.dtype == np.float16
    tiered.close()


@pytest.mark.parametrize("where", ["write", "merge"])
def test_a_full_disk_fails_the_call_and_loses_nothing(tmp_path, monkeypatch, where):
    """Run writes (spills) or merges fail for a while with ENOSPC: the calls that spill
    raise it (a merge, on its own thread, is counted in the stats and tried again), and the
    table still equals an all-RAM table with the same history, then and after the disk has
    room again; no partial file is left behind."""
    import errno

    from hoststore import _sorted_runs

    cfg = CONFIGS["always_adagrad_unseen"]
    ram = hs.EmbeddingTable(cfg)
    tiered = hs.EmbeddingTable(cfg, tier=DiskTier(str(tmp_path), max_rows=2))
    full, failures = [False], [0]
    real = _sorted_runs.RunWriter.add if where == "write" else _sorted_runs.merge

    def failing(*args, **kwargs):
        if full[0]:
            failures[0] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)

    if where == "write":
        monkeypatch.setattr(_sorted_runs.RunWriter, "add", failing)
    else:
        monkeypatch.setattr(_sorted_runs, "merge", failing)
    for step, op in enumerate(_history(seed=3, steps=90)):
        full[0] = 25 <= step < 50
        _apply(ram, op)
        try:
            _apply(tiered, op)
        except OSError as e:
            assert e.errno == errno.ENOSPC
        if step in (49, 89):  # (its reads spill too: they get room)
            full[0] = False
            assert_same(ram, tiered)
    stats = tiered.stats()
    assert failures[0] > 0 and stats["disk_rows"] > 0
    if where == "merge":
        assert stats["merge_failures"] > 0 and "No space" in stats["merge_error"]
    cold = tiered._cold
    cold.settle()
    on_disk = sorted(os.listdir(cold.path))
    assert on_disk == sorted(os.path.basename(r.path) for r in cold._runs)
    tiered.close()


@pytest.mark.parametrize(("rows", "ticks", "share"), [
    (1, 1, 1.0), (1000, 3, 0.1), (5000, 70_000, 0.5), (5000, 2**32 - 1, 0.01), (300, 1, 0.3),
])  # fmt: skip
def test_the_spill_picks_the_least_recently_used_rows(rows, ticks, share):
    """The spill's pick against a sort: the n live rows of smallest tick (ties, freed rows,
    ticks past 16 bits), each once."""
    from hoststore import _kernels as K

    rng = np.random.default_rng(rows)
    touch = rng.integers(0, ticks, rows, endpoint=True).astype(np.uint32)
    created = np.where(rng.random(rows) < 0.8, 0, -1).astype(np.int64)
    created[0] = 0
    live = np.flatnonzero(created >= 0)
    n = max(1, int(share * len(live)))
    pick = K.least_recent(touch, created, n)
    assert len(np.unique(pick)) == n and (created[pick] >= 0).all()
    want = np.sort(touch[live])[:n]
    np.testing.assert_array_equal(np.sort(touch[pick]), want)


def test_a_plain_serving_export_reads_the_disk_tier_without_the_lock(tmp_path):
    """An export that changes nothing reads the cold rows as of its first chunk while
    training goes on: pulls and pushes of cold keys proceed (faulted in and changed
    meanwhile, the export still has their values at the cut), spills wait; after it the
    table equals an all-RAM table with the same history."""
    cfg = hs.TableConfig("t", 4, initializer=hs.uniform(0.5), optimizer=opt.sgd(0.1))
    ram, tiered, keys = _ram_and_tiered(tmp_path, cfg)
    want = ram.export_serving(min_score=0.2)
    moved = keys[::3][:5_000]  # cold in the tiered table: faulted in, changed, spilled
    assert not tiered._rows.find(moved).max() >= 0

    def train(t):
        t.pull(moved, train=True)
        t.push(moved, np.full((len(moved), 4), 0.5, np.float32))

    with tiered.serving_rows(min_score=0.2) as rows:
        it = iter(rows)
        parts = [next(it)]
        done = threading.Event()
        writer = threading.Thread(target=lambda: (train(tiered), done.set()))
        writer.start()
        assert done.wait(60)  # not blocked by the export (a first compile can be slow)
        writer.join()
        assert tiered.stats()["ram_rows"] > 1_000  # the spill waits for the export
        parts += list(it)
    got = {k: np.concatenate([p[k] for p in parts]) for k in ("key", "emb")}
    og, ow = np.argsort(got["key"]), np.argsort(want["key"])
    np.testing.assert_array_equal(got["key"][og], want["key"][ow])
    np.testing.assert_array_equal(got["emb"][og], want["emb"][ow])  # as of the cut
    train(ram)
    tiered.pull(keys[:1], train=True)  # (spills down to the budget now)
    ram.pull(keys[:1], train=True)
    assert tiered.stats()["ram_rows"] <= 1_000
    assert_same(tiered, ram)
    tiered.close()
