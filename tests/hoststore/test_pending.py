"""The pending-admission counters against a dict model, through growth, drops, expiry and
displacement (the free entries are a list linked through the entries themselves: an entry
handed out twice, or lost, shows up as a key whose counters differ from the model's)."""

from __future__ import annotations

import numpy as np
import pytest

from hoststore._pending import _U16_MAX, PendingCounters


class Model:
    """key -> [show, click, last_seen], with the same capacity rule as the table."""

    def __init__(self, max_entries: int):
        self.max, self.cap, self.d = max_entries, min(1024, max_entries), {}

    def add(self, keys, shows, clock, ttl) -> dict[str, int]:
        out = {"rejected": 0, "expired_pending": 0, "displaced_pending": 0}
        n = len(keys)
        if self.cap - len(self.d) < n and self.cap < self.max:
            self.cap = min(self.max, max(2 * self.cap, len(self.d) + n))
        if self.cap - len(self.d) < n:
            old = [k for k, v in self.d.items() if clock - v[2] >= ttl]
            out["expired_pending"] = len(old)
            for k in old:
                del self.d[k]
        short = n - (self.cap - len(self.d))
        if short > 0:
            stalest = sorted(self.d, key=lambda k: (self.d[k][2], self.d[k][0], k))[:short]
            out["displaced_pending"] = len(stalest)
            for k in stalest:
                del self.d[k]
        room = min(n, self.cap - len(self.d))
        for k, s in zip(keys[:room], shows[:room]):
            self.d[int(k)] = [min(int(s), _U16_MAX), 0, clock]
        out["rejected"] = n - room
        return out


def _check(p: PendingCounters, m: Model) -> None:
    got = p.export()
    assert len(p) == len(m.d) == len(got["key"])
    assert p.cap == m.cap
    rows = {int(k): [int(s), int(c), int(t)] for k, s, c, t in
            zip(got["key"], got["show"], got["click"], got["last_seen"])}  # fmt: skip
    assert rows == m.d
    keys = np.array(sorted(m.d), np.int64)
    entries = p.find(keys)
    assert (entries >= 0).all() and len(np.unique(entries)) == len(keys)
    assert p.memory_bytes()[0] == 16 * p.cap  # no per-entry free list beside the entries


@pytest.mark.parametrize("max_entries,universe", [(100_000, 3_000), (1_500, 5_000), (300, 2_000)])
def test_counters_equal_a_dict_model(max_entries, universe):
    rng = np.random.default_rng(max_entries)
    p, m = PendingCounters(max_entries), Model(max_entries)
    ttl = 3
    for clock in range(60):
        keys = np.unique(rng.integers(-universe, universe, rng.integers(1, 700)))
        present = p.find(keys) >= 0
        assert (present == np.isin(keys, list(m.d))).all()
        op = clock % 4
        if op in (0, 1):  # new keys join (growing, expiring or displacing to make room)
            new = rng.permutation(keys[~present])
            shows = rng.integers(1, 4, len(new)).astype(np.float32)
            assert p.add(new, shows, clock, ttl) == m.add(new, shows, clock, ttl)
        elif op == 2:  # some pending keys are admitted: their entries are freed
            gone = keys[present][rng.random(present.sum()) < 0.6]
            p.drop(rng.permutation(p.find(gone)))
            for k in gone:
                del m.d[int(k)]
        else:  # shows and clicks counted, keys repeated or not
            distinct = bool(clock % 8 == 3)
            ks = keys if distinct else rng.choice(keys, 2 * len(keys))
            s = rng.integers(0, 3, len(ks)).astype(np.float32)
            c = rng.integers(0, 2, len(ks)).astype(np.float32)
            p.count(ks, s, c, clock, distinct=distinct)
            for k, si, ci in zip(ks, s, c):
                if int(k) in m.d:
                    v = m.d[int(k)]
                    v[0], v[1], v[2] = min(v[0] + int(si), _U16_MAX), v[1] + int(ci), clock
            if clock % 16 == 7:
                n_old = sum(clock - v[2] >= ttl for v in m.d.values())
                assert p.expire(clock, ttl) == n_old
                m.d = {k: v for k, v in m.d.items() if clock - v[2] < ttl}
        _check(p, m)
    p2 = PendingCounters(max_entries)  # a snapshot's counters read back, then used again
    p2.replace(p.export())
    m.cap = max(len(m.d), min(1024, max_entries))  # (read back to fit)
    _check(p2, m)
    new = np.arange(10 * universe, 10 * universe + 50, dtype=np.int64)
    assert p2.add(new, np.ones(50), 99, ttl) == m.add(new, np.ones(50), 99, ttl)
    _check(p2, m)


def test_entries_freed_from_a_full_table_are_reused_before_it_grows():
    p, m = PendingCounters(4096), Model(4096)
    for keys in (np.arange(1024), np.arange(1024, 1030), np.arange(2000, 2100)):
        if keys[0] == 1024:  # the table is full (no free entry): free a few, then add more
            gone = np.arange(0, 1024, 100)
            p.drop(p.find(gone))
            for k in gone:
                del m.d[int(k)]
        keys = keys.astype(np.int64)
        assert p.add(keys, np.ones(len(keys)), 1, 5) == m.add(keys, np.ones(len(keys)), 1, 5)
        _check(p, m)
