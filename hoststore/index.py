"""Open-addressing hash index: int64 key -> int32 entry number, compiled with numba.

The index holds only entry numbers (4 bytes a slot); the key of entry ``e`` lives in the
owner's ``entry_keys[e]``, so a key is stored once. Linear probing with backward-shift
deletion (no tombstones, so lookups never slow down after many evictions). The slot count
need not be a power of two: the home slot is ``(hash_hi32 * size) >> 32`` (Lemire's
reduction), which lets the owner keep the load near ``MAX_LOAD`` instead of between a
quarter and a half.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from hoststore.hashing import INDEX_SALT, mix64

EMPTY = np.int32(-1)
MAX_LOAD = 0.7
_S32 = np.uint64(32)


def slots_for(entry_capacity: int) -> int:
    """Index size for ``entry_capacity`` entries at the maximum load factor."""
    return max(8, int(np.ceil(entry_capacity / MAX_LOAD)) + 1)


def new_index(entry_capacity: int) -> np.ndarray:
    return np.full(slots_for(entry_capacity), EMPTY, dtype=np.int32)


@nb.njit(inline="always", cache=True)
def _home(key: np.int64, size: int) -> int:
    h = mix64(np.uint64(key) ^ INDEX_SALT)
    return np.int64(((h >> _S32) * np.uint64(size)) >> _S32)


@nb.njit(inline="always", cache=True)
def find(index, entry_keys, key) -> int:
    size = index.shape[0]
    s = _home(key, size)
    while True:
        e = index[s]
        if e < 0:
            return -1
        if entry_keys[e] == key:
            return e
        s += 1
        if s == size:
            s = 0


@nb.njit(inline="always", cache=True)
def insert(index, entry_keys, key, entry) -> None:
    """Adds ``key -> entry``; the caller guarantees the key is absent and a slot is free."""
    size = index.shape[0]
    s = _home(key, size)
    while index[s] >= 0:
        s += 1
        if s == size:
            s = 0
    index[s] = entry


@nb.njit(cache=True)
def delete(index, entry_keys, key) -> int:
    """Removes ``key``; returns its entry or -1. Backward-shift keeps probe chains intact."""
    size = index.shape[0]
    s = _home(key, size)
    while True:
        e = index[s]
        if e < 0:
            return -1
        if entry_keys[e] == key:
            break
        s += 1
        if s == size:
            s = 0
    hole = s
    j = s
    while True:
        j += 1
        if j == size:
            j = 0
        e2 = index[j]
        if e2 < 0:
            break
        h = _home(entry_keys[e2], size)
        # Move e2 into the hole unless its home lies cyclically in (hole, j].
        if hole <= j:
            stays = hole < h <= j
        else:
            stays = h > hole or h <= j
        if not stays:
            index[hole] = e2
            hole = j
    index[hole] = EMPTY
    return e


GROUP = 32


@nb.njit(inline="always", cache=True)
def find_group(index, entry_keys, keys, base, m, slots, ents, seen, out) -> None:
    """out[base:base+m] = entries of keys[base:base+m] (or -1).

    The loads are staged (home slots, then slots, then the entries' keys), so the cache
    misses of the whole group are in flight together instead of one key's two dependent
    misses at a time. Only keys not at their home slot probe further. Callers process the
    group right after, while its lines are still in cache.
    """
    size = index.shape[0]
    for k in range(m):
        slots[k] = _home(keys[base + k], size)
    for k in range(m):
        ents[k] = index[slots[k]]
    for k in range(m):
        seen[k] = entry_keys[ents[k]] if ents[k] >= 0 else 0
    for k in range(m):
        e = ents[k]
        if e < 0:
            out[base + k] = -1
        elif seen[k] == keys[base + k]:
            out[base + k] = e
        else:
            out[base + k] = find(index, entry_keys, keys[base + k])


@nb.njit(inline="always", cache=True)
def group_buffers():
    return np.empty(GROUP, np.int64), np.empty(GROUP, np.int64), np.empty(GROUP, np.int64)


@nb.njit(nogil=True, cache=True)
def find_many(index, entry_keys, keys, out) -> None:
    """out[i] = entry of keys[i] or -1."""
    slots, ents, seen = group_buffers()
    n = keys.shape[0]
    for base in range(0, n, GROUP):
        find_group(index, entry_keys, keys, base, min(GROUP, n - base), slots, ents, seen, out)


@nb.njit(nogil=True, cache=True)
def delete_many(index, entry_keys, keys) -> None:
    for i in range(keys.shape[0]):
        delete(index, entry_keys, keys[i])


@nb.njit(nogil=True, cache=True)
def rebuild(index, entry_keys, live) -> None:
    """Fills an empty ``index`` with every entry ``e`` where ``live[e]``."""
    for e in range(live.shape[0]):
        if live[e]:
            insert(index, entry_keys, entry_keys[e], e)


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
        k = keys[i]
        e = find(scratch, uniq, k)
        if e < 0:
            e = u
            uniq[u] = k
            insert(scratch, uniq, k, u)
            u += 1
        inverse[i] = e
        counts[e] += 1
    return uniq[:u], inverse, counts[:u]


def unique_with_inverse(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys in first-seen order, inverse, counts) of an int64 array."""
    scratch = new_index(len(keys))
    return unique_inverse(np.ascontiguousarray(keys, dtype=np.int64), scratch)
