"""EmbeddingTable behaviour: keys, admission, eviction, bad input, threads, memory bounds."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import hoststore as hs
from hoststore import optimizers as opt

I64 = np.iinfo(np.int64)
EDGE = np.array([0, -1, 1, I64.min, I64.max, I64.min + 1, I64.max - 1], np.int64)


def _factory(shards):
    def make(dim=4, **kw):
        cfg = hs.TableConfig("t", dim, **kw)
        return hs.EmbeddingTable(cfg) if shards == 1 else hs.ShardedTable(cfg, shards)

    return make


# Every test of the interface runs on a plain table and on a 3-shard in-process table.
@pytest.fixture(params=[1, 3], ids=["table", "sharded3"])
def table(request):
    return _factory(request.param)


def test_edge_keys_are_distinct_rows(table):
    t = table(initializer=hs.uniform(1.0))
    rows = t.pull(EDGE, train=True)
    assert len(t) == len(EDGE)
    assert len({r.tobytes() for r in rows}) == len(EDGE)
    np.testing.assert_array_equal(t.pull(EDGE[::-1], train=False), rows[::-1])


def test_uint64_keys_are_reinterpreted(table):
    t = table()
    u = np.array([2**64 - 1, 2**63], np.uint64)
    a = t.pull(u, train=True)
    np.testing.assert_array_equal(a, t.pull(np.array([-1, I64.min], np.int64), train=False))


def test_eval_pull_changes_nothing(table):
    t = table(admission=hs.count_filter(2))
    t.pull(np.array([1, 2], np.int64), train=True)
    before = t.stats()
    out = t.pull(np.array([1, 2, 3, 3], np.int64), train=False)
    assert (out == 0).all() and t.stats() == before
    assert not t.pending_stats(np.array([3], np.int64))["pending"][0]


@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_lookups_equal_one_thread(threads):
    """A read-only pull split over lookup threads returns the same rows (known keys, unknown
    keys and duplicates alike) and changes nothing."""
    rng = np.random.default_rng(threads)
    t = hs.EmbeddingTable(hs.TableConfig("t", 8, initializer=hs.uniform(1.0)))
    known = rng.integers(I64.min, I64.max, 50_000, dtype=np.int64, endpoint=True)
    t.pull(known, train=True)
    ids = np.concatenate([rng.choice(known, 90_000), rng.integers(0, 2**40, 10_000)])
    one = t.pull(ids, train=False)
    before = t.stats()
    t.lookup_threads = threads
    np.testing.assert_array_equal(t.pull(ids, train=False), one)
    assert t.stats() == before
    with pytest.raises(ValueError, match="lookup_threads"):
        t.lookup_threads = 0


def test_pull_with_counts_prepends_the_counters_before_the_sighting(table):
    """(show, click) of rows, of pending keys and 0 for unknown keys, as they stood before
    the pull; the embedding part equals a plain pull on a twin table."""
    ops = lambda t: (  # noqa: E731
        t.pull(np.array([1, 1, 2], np.int64), train=True),  # 1 admitted (2nd sighting), 2 pending
        t.push(np.array([1, 2], np.int64), np.zeros((2, 4), np.float32), clicks=np.ones(2)),
    )
    t, twin = table(admission=hs.count_filter(2)), table(admission=hs.count_filter(2))
    ops(t), ops(twin)
    ids = np.array([1, 2, 3], np.int64)
    out = t.pull(ids, train=True, with_counts=True)  # admits 2, makes 3 pending
    np.testing.assert_array_equal(out[:, 2:], twin.pull(ids, train=True))
    np.testing.assert_array_equal(out[:, :2], [[2, 1], [1, 1], [0, 0]])
    after = t.pull(ids, train=False, with_counts=True)
    np.testing.assert_array_equal(after[:, :2], [[3, 1], [2, 1], [1, 0]])
    assert after.shape == (3, hs.COUNT_COLUMNS + 4)


@pytest.mark.parametrize("seed", [0, 5])
def test_initial_rows_depend_only_on_seed_and_key(table, seed):
    keys = np.random.default_rng(0).integers(I64.min, I64.max, 500, dtype=np.int64)
    init = hs.normal(0.3)
    a = table(dim=8, initializer=init, seed=seed).pull(keys, train=True)
    # Reverse order, arriving in small batches, split over 3 shards.
    shard = hs.shard_of(keys, 3)
    got = np.empty_like(a)
    for s in range(3):
        t = table(dim=8, initializer=init, seed=seed)
        idx = np.flatnonzero(shard == s)[::-1]
        for chunk in np.array_split(idx, 7):
            got[chunk] = t.pull(keys[chunk], train=True)
    np.testing.assert_array_equal(a, got)
    np.testing.assert_allclose(a, hs.initial_rows(init, seed, keys, 8), rtol=1e-6)
    assert abs(a.std() - 0.3) < 0.02
    other = table(dim=8, initializer=init, seed=seed + 1).pull(keys, train=True)
    assert not np.allclose(a, other)


def test_count_filter_admits_at_nth_sighting_and_pending_pulls_default(table):
    t = table(admission=hs.count_filter(3, default_value=0.5), initializer=hs.uniform(0.01))
    k = np.array([77], np.int64)
    for _ in range(2):
        assert (t.pull(k, train=True) == 0.5).all()
        t.push(k, np.ones((1, 4), np.float32))  # dropped: not admitted
    assert len(t) == 0 and t.pending_count() == 1
    row = t.pull(k, train=True)
    assert len(t) == 1 and t.pending_count() == 0 and np.abs(row).max() <= 0.01
    st = t.row_stats(k)
    assert st["show"][0] == 3 and np.isclose(st["delta_score"][0], 3 * 0.1)  # 3 shows
    assert t.stats()["admitted"] == 1


def test_duplicates_in_one_pull_count_as_sightings(table):
    t = table(admission=hs.count_filter(3))
    out = t.pull(np.array([9, 9, 9, 4], np.int64), train=True)
    assert len(t) == 1 and (out[3] == 0).all() and (out[0] == out[2]).all() and out[0].any()


def test_show_click_admission_uses_pushed_clicks(table):
    t = table(admission=hs.show_click(2.0, nonclk_coeff=0.1, click_coeff=1.0))
    k = np.array([5], np.int64)
    t.pull(k, train=True)
    t.push(k, np.zeros((1, 4), np.float32), clicks=np.array([2.0]))
    assert len(t) == 0
    assert t.pending_stats(k)["click"][0] == 2
    t.pull(k, train=True)  # score = (2 - 2) * 0.1 + 2 * 1 = 2 >= 2
    assert len(t) == 1
    assert t.row_stats(k)["click"][0] == 2


def test_probability_admission_rate(table):
    t = table(admission=hs.probability(0.25))
    keys = np.arange(20_000, dtype=np.int64)
    t.pull(keys, train=True)
    assert 0.23 < len(t) / len(keys) < 0.27
    assert t.pending_count() == 0


def test_pending_counters_are_bounded_and_expire(table):
    t = table(admission=hs.count_filter(5, max_pending=999, pending_ttl=2))
    flood = np.arange(5000, dtype=np.int64)
    t.pull(flood, train=True)
    st = t.stats()
    assert st["pending"] == 999 and st["rejected"] == 4001 and st["rows"] == 0
    assert st["pending_bytes"] + st["pending_index_bytes"] <= 24 * 999
    t.advance_clock(2)
    t.pull(np.arange(10_000, 10_500, dtype=np.int64), train=True)  # full: expired ones go
    st = t.stats()
    assert st["pending"] == 500 and st["expired_pending"] == 999


def test_unseen_eviction_and_slot_reuse(table):
    t = table(eviction=hs.Eviction(unseen_ticks=1))  # Paddle: unseen > delete_after_unseen_days
    t.pull(np.arange(100, dtype=np.int64), train=True)
    cap = t.stats()["capacity"]
    t.advance_clock(1)
    t.pull(np.arange(50, dtype=np.int64), train=True)
    assert t.shrink() == 0  # unseen for 1 tick: not more than 1
    t.advance_clock(1)
    assert t.shrink() == 50 and len(t) == 50
    assert sorted(t.evicted_keys().tolist()) == list(range(50, 100))
    assert (t.pull(np.arange(50, 100, dtype=np.int64), train=False) == 0).all()
    t.pull(np.arange(1000, 1050, dtype=np.int64), train=True)
    assert t.stats()["capacity"] == cap  # freed slots reused


def test_max_rows_keeps_the_highest_scores():
    t = _factory(1)(eviction=hs.Eviction(max_rows=3))
    keys = np.arange(6, dtype=np.int64)
    t.pull(keys, train=True)
    t.push(keys, np.zeros((6, 4), np.float32), clicks=np.array([0, 3, 0, 2, 1, 0], np.float32))
    assert t.shrink() == 3
    assert t.row_stats(keys)["present"].tolist() == [False, True, False, True, True, False]


def test_decay_is_lazy_and_applies_to_scores(table):
    t = table(eviction=hs.Eviction(decay=0.5, min_score=0.2, nonclk_coeff=1.0))
    t.pull(np.array([1, 1, 1, 1, 2], np.int64), train=True)
    t.advance_clock(2)  # show: 4 -> 1.0 and 1 -> 0.25
    np.testing.assert_allclose(t.row_stats(np.array([1, 2], np.int64))["show"], [1.0, 0.25])
    t.advance_clock(1)  # 0.5 and 0.125 < 0.2
    assert t.shrink() == 1 and len(t) == 1


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda t: t.pull([1, 2], train=True), "numpy array"),
        (lambda t: t.pull(np.array([1.0]), train=True), "dtype int64"),
        (lambda t: t.pull(np.zeros((2, 2), np.int64), train=True), "1-D"),
        (lambda t: t.push(np.array([1], np.int64), np.zeros((2, 4), np.float32)), "shape"),
        (lambda t: t.push(np.array([1], np.int64), np.zeros((1, 3), np.float32)), "dim 4"),
        (lambda t: t.push(np.array([1], np.int64), np.full((1, 4), np.nan, np.float32)), "NaN"),
        (lambda t: t.push(np.array([1], np.int64), np.full((1, 4), np.inf)), "NaN or Inf"),
        (lambda t: t.push(np.array([1], np.int64), np.zeros((1, 4), np.int32)), "floating"),
        (lambda t: t.push(np.array([1], np.int64), np.zeros((1, 4)), clicks=[1, 2]), "clicks"),
        (lambda t: t.push(np.array([1], np.int64), np.zeros((1, 4)), shows=[-1.0]), "shows"),
        (lambda t: t.advance_clock(-1), "n >= 0"),
    ],
)
def test_bad_input_raises_and_leaves_table_unchanged(table, call, match):
    t = table(optimizer=opt.sgd(1.0))
    keys = np.array([1, 2], np.int64)
    before = t.pull(keys, train=True).copy()
    stats = t.stats()
    with pytest.raises(ValueError, match=match):
        call(t)
    assert t.stats() == stats
    np.testing.assert_array_equal(t.pull(keys, train=False), before)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: hs.TableConfig("t", 0), "dim"),
        (lambda: hs.TableConfig("", 4), "name"),
        (lambda: hs.probability(1.5), "probability"),
        (lambda: hs.count_filter(0), "n must be"),
        (lambda: hs.Eviction(decay=0.0), "decay"),
        (lambda: hs.Initializer("magic"), "initializer"),
        (lambda: hs.TableConfig("t", 4, weight_bounds=(1.0, -1.0)), "weight_bounds"),
    ],
)
def test_bad_config_raises(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_growth_keeps_every_row(table):
    t = table(dim=2, initial_capacity=16, initializer=hs.uniform(1.0))
    keys = np.random.default_rng(3).permutation(200_000).astype(np.int64) * 7919 - 10**6
    first = np.concatenate([t.pull(c, train=True) for c in np.array_split(keys, 37)])
    assert len(t) == len(keys)
    np.testing.assert_array_equal(t.pull(keys, train=False), first)


def test_growth_copies_rows_when_memory_cannot_be_reserved(monkeypatch):
    from hoststore import _row_storage

    monkeypatch.setattr(_row_storage, "_reserve", lambda nbytes: None)
    t = hs.EmbeddingTable(hs.TableConfig("t", dim=3, initial_capacity=16))
    keys = np.arange(5000, dtype=np.int64) * 7919
    first = np.concatenate([t.pull(c, train=True) for c in np.array_split(keys, 20)])
    assert t.growth["row_copies"] > 0
    np.testing.assert_array_equal(t.pull(keys, train=False), first)


def test_growth_widens_rows_in_place():
    t = hs.EmbeddingTable(hs.TableConfig("t", dim=4, initial_capacity=16))
    emb_before = t._rows.emb
    for chunk in np.array_split(np.arange(100_000, dtype=np.int64), 50):
        t.pull(chunk, train=True)
    assert t.growth["resizes"] > 5 and t.growth["row_copies"] == 0
    # The first, 16-row view is the start of the same memory: no row moved.
    assert np.shares_memory(emb_before, t._rows.emb)
    assert emb_before.ctypes.data == t._rows.emb.ctypes.data
    assert t.stats()["growth_seconds"] == t.growth["seconds"]


def test_sharded_max_rows_is_split_over_shards():
    t = _factory(3)(eviction=hs.Eviction(max_rows=30))
    t.pull(np.arange(300, dtype=np.int64), train=True)
    t.shrink()
    assert all(len(s) == 10 for s in t.shards) and len(t) == 30


def test_threads_pushing_the_same_keys(table):
    t = table(optimizer=opt.sgd(1.0), initializer=hs.zeros())
    keys = np.arange(64, dtype=np.int64)
    t.pull(keys, train=True)
    ones = np.ones((len(keys), 4), np.float32)
    n_threads, n_pushes = 4, 200

    def work():
        for _ in range(n_pushes):
            t.push(keys, ones)
            t.pull(keys, train=True)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    # SGD with lr 1 and gradient 1: every push subtracts exactly 1 from every coordinate.
    np.testing.assert_array_equal(t.pull(keys, train=False), -n_threads * n_pushes)
    assert (t.row_stats(keys)["show"] == 1 + n_threads * n_pushes).all()  # no count lost


@pytest.mark.parametrize("evict_between", [False, True])
def test_assume_unique_push_equals_the_general_push(table, evict_between):
    """The fast path (no dedup, rows remembered from the pull) changes nothing observable,
    also when eviction frees and reuses rows between the pull and the push."""
    kw = dict(optimizer=opt.adagrad(0.3), admission=hs.count_filter(2),
              eviction=hs.Eviction(unseen_ticks=1))  # fmt: skip
    a, b = table(**kw), table(**kw)
    rng = np.random.default_rng(0)
    for step in range(6):
        ids = rng.choice(np.arange(-40, 40, dtype=np.int64), 30, replace=False)
        grads = rng.normal(size=(30, 4)).astype(np.float32)
        clicks = rng.integers(0, 2, 30).astype(np.float32)
        for t in (a, b):
            t.pull(ids, train=True)
            if evict_between and step % 2:
                t.advance_clock(1)
                t.shrink()
                t.pull(rng.integers(1000, 2000, 20) + 1000 * step, train=True)  # reuse slots
        rng = np.random.default_rng(step)  # the same extra keys for both tables
        a.push(ids, grads, clicks=clicks)
        b.push(ids.copy(), grads, clicks=clicks, assume_unique=True)
    probe = np.arange(-40, 40, dtype=np.int64)
    np.testing.assert_array_equal(a.pull(probe, train=False), b.pull(probe, train=False))
    for k in ("present", "show", "click", "delta_score", "last_seen"):
        np.testing.assert_array_equal(a.row_stats(probe)[k], b.row_stats(probe)[k])
    np.testing.assert_array_equal(a.pending_stats(probe)["show"], b.pending_stats(probe)["show"])


@pytest.mark.parametrize("assume_unique", [False, True])
def test_a_push_for_pending_keys_changes_no_other_row(table, assume_unique):
    """Gradients pushed for keys still pending admission are dropped, and only the pushed
    rows change, also when the row arrays are full (their last slot holds a live row, the
    one a row index of -1 would reach)."""
    t = table(optimizer=opt.sgd(1.0), admission=hs.count_filter(2), initial_capacity=16)
    live = np.arange(48, dtype=np.int64)  # 16 rows a shard at most: full arrays
    for _ in range(2):
        t.pull(live, train=True)
    before = t.pull(live, train=False)
    ids = np.array([1000, 1001, 5], np.int64)  # two pending keys, then a live one
    t.pull(ids, train=True)
    t.push(ids, np.ones((3, 4), np.float32), assume_unique=assume_unique)
    expect = before.copy()
    expect[5] -= 1.0
    np.testing.assert_array_equal(t.pull(live, train=False), expect)


def test_pending_count_is_exact_across_growth_and_expiry(table):
    t = table(admission=hs.count_filter(99, pending_ttl=2))
    rng = np.random.default_rng(1)
    last: dict[int, int] = {}  # key -> clock of its last sighting
    for clock in range(12):
        ids = rng.integers(0, 5000, 700).astype(np.int64)
        t.pull(ids, train=True)
        last.update((k, clock) for k in ids.tolist())
        t.advance_clock(1)
        if clock % 3 == 2:
            t.shrink()
            last = {k: c for k, c in last.items() if clock + 1 - c < 2}
        keys = np.array(sorted(last), np.int64)
        assert t.pending_count() == len(last) == t.pending_stats(keys)["pending"].sum()


def test_when_pending_counters_are_full_the_stalest_give_way():
    # One table (shards split max_pending and give way each within their own share).
    t = hs.EmbeddingTable(hs.TableConfig("t", 4, admission=hs.count_filter(3, max_pending=1000)))
    old = np.arange(1000, dtype=np.int64)
    twice, once, fresh = old[10:990], old[990:], old[:10]
    t.pull(twice, train=True)
    t.pull(twice, train=True)
    t.pull(once, train=True)  # as stale, with fewer shows: the first to go
    t.advance_clock(1)
    t.pull(fresh, train=True)  # the freshest, with the fewest shows: kept
    t.pull(np.arange(5000, 5500, dtype=np.int64), train=True)
    st = t.stats()
    assert st["pending"] == 1000 and st["rejected"] == 0 and st["displaced_pending"] == 500
    left = t.pending_stats(old)
    assert left["pending"][:10].all() and (left["show"][:10] == 1).all()
    assert not left["pending"][990:].any()
    # Then the 490 smallest keys of those seen twice (ties: the smallest key goes first).
    assert not left["pending"][10:500].any() and left["pending"][500:990].all()
    new = t.pending_stats(np.arange(5000, 5500, dtype=np.int64))
    assert new["pending"].all()
