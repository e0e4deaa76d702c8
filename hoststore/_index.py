"""Open-addressing hash index: int64 key -> entry number, compiled with numba.

A slot holds an entry number (4 bytes), or an entry number and 31 bits of the key's hash
(8 bytes, "tagged"); the key of entry ``e`` lives in the owner's ``entry_keys[e]``, so a
key is stored once. Linear probing with backward-shift
deletion (no tombstones, so lookups never slow down after many evictions). The slot count
need not be a power of two: the home slot is ``(hash_hi32 * size) >> 32`` (Lemire's
reduction), which lets the owner keep the load near ``MAX_LOAD`` instead of between a
quarter and a half.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from hoststore._hashing import INDEX_SALT, mix64
from hoststore._prefetch import prefetch, prefetch_row

EMPTY = -1
MAX_LOAD = 0.7
_S32 = np.uint64(32)
_LOW32 = np.int64(0xFFFFFFFF)
_TAG_BITS = np.uint64(0x7FFFFFFF)


def slots_for(entry_capacity: int) -> int:
    """Index size for ``entry_capacity`` entries at the maximum load factor."""
    return max(8, int(np.ceil(entry_capacity / MAX_LOAD)) + 1)


def new_index(entry_capacity: int, tagged: bool = False) -> np.ndarray:
    """An empty index. ``tagged`` (8-byte slots) keeps 31 bits of each key's hash beside
    its entry, so a probe rejects a wrong slot without loading that entry's key: one cache
    miss fewer per lookup, for 4 more bytes a slot."""
    return np.full(slots_for(entry_capacity), EMPTY, dtype=np.int64 if tagged else np.int32)


@nb.njit(inline="always", cache=True)
def _hash(key):
    return mix64(np.uint64(key) ^ INDEX_SALT)


@nb.njit(inline="always", cache=True)
def _home_of(h, size):
    return np.int64(((h >> _S32) * np.uint64(size)) >> _S32)


@nb.njit(inline="always", cache=True)
def _home(key, size):
    return _home_of(_hash(key), size)


@nb.njit(inline="always", cache=True)
def _tag(index, h):
    """The slot bits above the entry: 31 hash bits in a tagged index, none otherwise."""
    if index.itemsize == 8:
        return np.int64(h & _TAG_BITS) << 32
    return np.int64(0)


@nb.njit(inline="always", cache=True)
def _entry(index, v):
    if index.itemsize == 8:
        return v & _LOW32
    return np.int64(v)


@nb.njit(inline="always", cache=True)
def _tag_ok(index, v, tag):
    if index.itemsize == 8:
        return (v & ~_LOW32) == tag
    return True


@nb.njit(inline="always", cache=True)
def find_slot(index, entry_keys, key) -> int:
    size = index.shape[0]
    h = _hash(key)
    s = _home_of(h, size)
    tag = _tag(index, h)
    while True:
        v = index[s]
        if v < 0:
            return -1
        if _tag_ok(index, v, tag) and entry_keys[_entry(index, v)] == key:
            return s
        s += 1
        if s == size:
            s = 0


@nb.njit(inline="always", cache=True)
def find(index, entry_keys, key) -> int:
    """The entry of ``key``, or -1."""
    s = find_slot(index, entry_keys, key)
    return -1 if s < 0 else _entry(index, index[s])


@nb.njit(inline="always", cache=True)
def _place(index, s, value) -> None:
    """Writes ``value`` into the first empty slot at or after ``s`` (cyclically)."""
    size = index.shape[0]
    while index[s] >= 0:
        s += 1
        if s == size:
            s = 0
    index[s] = value


@nb.njit(inline="always", cache=True)
def insert(index, entry_keys, key, entry) -> None:
    """Adds ``key -> entry``; the caller guarantees the key is absent and a slot is free."""
    h = _hash(key)
    _place(index, _home_of(h, index.shape[0]), _tag(index, h) | entry)


@nb.njit(cache=True)
def delete(index, entry_keys, key) -> int:
    """Removes ``key``; returns its entry or -1. Backward-shift keeps probe chains intact."""
    size = index.shape[0]
    s = np.int64(find_slot(index, entry_keys, key))
    if s < 0:
        return -1
    e = _entry(index, index[s])
    hole = s
    j = s
    while True:
        j += 1
        if j == size:
            j = 0
        v2 = index[j]
        if v2 < 0:
            break
        h = _home(entry_keys[_entry(index, v2)], size)
        # Move v2 into the hole unless its home lies cyclically in (hole, j].
        if hole <= j:
            stays = hole < h <= j
        else:
            stays = h > hole or h <= j
        if not stays:
            index[hole] = v2
            hole = j
    index[hole] = EMPTY
    return e


GROUP = 32
REBUILD_GROUP = 64
NO_ROWS = np.empty(0, np.float32)


@nb.njit(inline="always", cache=True)
def find_group(index, entry_keys, keys, base, m, homes, tags, cands, out, rows, row_len) -> None:
    """out[base:base+m] = entries of keys[base:base+m] (or -1).

    Three passes, so the cache misses of the whole group are in flight together instead
    of one key's dependent misses at a time: (1) hash every key and prefetch its home
    slot; (2) walk each probe chain (now in cache) to the first slot whose tag matches,
    and prefetch that entry's key and, if ``row_len``, its row ``rows[e*row_len:...]``
    (the caller's payload, e.g. the flattened embedding); (3) confirm the keys. A
    tag match on another key (about one probe in 2^31) falls back to a full probe.
    Callers process the group right after, while its lines are still in cache.
    """
    size = index.shape[0]
    for k in range(m):
        h = _hash(keys[base + k])
        s = _home_of(h, size)
        homes[k] = s
        tags[k] = _tag(index, h)
        prefetch(index, s)
    for k in range(m):
        s = homes[k]
        tag = tags[k]
        e = np.int64(-1)
        while True:
            v = index[s]
            if v < 0:
                break
            if _tag_ok(index, v, tag):
                e = _entry(index, v)
                prefetch(entry_keys, e)
                if row_len:
                    prefetch_row(rows, e, row_len)
                break
            s += 1
            if s == size:
                s = 0
        cands[k] = e
    for k in range(m):
        e = cands[k]
        key = keys[base + k]
        if e >= 0 and entry_keys[e] != key:
            e = find(index, entry_keys, key)
        out[base + k] = e


@nb.njit(inline="always", cache=True)
def group_buffers():
    return np.empty(GROUP, np.int64), np.empty(GROUP, np.int64), np.empty(GROUP, np.int64)


@nb.njit(nogil=True, cache=True)
def find_many(index, entry_keys, keys, out) -> None:
    """out[i] = entry of keys[i] or -1."""
    homes, tags, cands = group_buffers()
    n = keys.shape[0]
    for base in range(0, n, GROUP):
        m = min(GROUP, n - base)
        find_group(index, entry_keys, keys, base, m, homes, tags, cands, out, NO_ROWS, 0)


@nb.njit(inline="always", cache=True)
def find_or_append(scratch, uniq, key, n):
    """(entry of ``key`` among ``uniq[:n]``, new n): an absent key is appended at ``n``.
    The dedup step of every first-seen-order unique pass over a batch."""
    e = find(scratch, uniq, key)
    if e >= 0:
        return e, n
    uniq[n] = key
    insert(scratch, uniq, key, n)
    return n, n + 1


@nb.njit(nogil=True, cache=True)
def delete_many(index, entry_keys, keys) -> None:
    """Deletes ``keys``, a group at a time: the group's home slots are prefetched first,
    so their cache misses overlap (each delete then walks its chain in cache)."""
    size = index.shape[0]
    n = keys.shape[0]
    for base in range(0, n, GROUP):
        m = min(GROUP, n - base)
        for k in range(m):
            prefetch(index, _home_of(_hash(keys[base + k]), size))
        for k in range(m):
            delete(index, entry_keys, keys[base + k])


@nb.njit(nogil=True, cache=True)
def rebuild(index, entry_keys, live) -> None:
    """Fills an empty ``index`` with every entry ``e`` where ``live[e]``.

    Entries go in by groups: hash the group's keys and prefetch their home slots, then
    insert, so the random slot misses of a group overlap (the table's growth runs this
    over every row while holding the table's lock)."""
    size = index.shape[0]
    n = live.shape[0]
    homes = np.empty(REBUILD_GROUP, np.int64)
    slot_bits = np.empty(REBUILD_GROUP, np.int64)
    e = 0
    while e < n:
        m = 0
        while m < REBUILD_GROUP and e < n:
            if live[e]:
                h = _hash(entry_keys[e])
                s = _home_of(h, size)
                prefetch(index, s)
                homes[m] = s
                slot_bits[m] = _tag(index, h) | e
                m += 1
            e += 1
        for k in range(m):
            _place(index, homes[k], slot_bits[k])


@nb.njit(nogil=True, cache=True)
def unique_inverse(keys, scratch):
    """First-occurrence-ordered unique keys, inverse map and counts, in O(n).

    ``scratch`` is an int32 array of at least ``slots_for(len(keys))`` slots, filled with
    -1 on entry (and left dirty).
    """
    n = keys.shape[0]
    uniq = np.empty(n, dtype=np.int64)
    inverse = np.empty(n, dtype=np.int64)
    counts = np.zeros(n, dtype=np.int64)
    u = 0
    for i in range(n):
        e, u = find_or_append(scratch, uniq, keys[i], u)
        inverse[i] = e
        counts[e] += 1
    return uniq[:u], inverse, counts[:u]


def unique_with_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys in first-seen order, inverse, counts) of an int64 array."""
    scratch = new_index(len(keys))
    return unique_inverse(np.ascontiguousarray(keys, dtype=np.int64), scratch)
