"""The bounded table of pending-admission counters.

A key that has been sighted but not yet admitted costs one 16-byte entry (key, show,
click as saturating uint16, last-seen clock) plus an index slot, never a full row. The
table grows by doubling up to ``max_pending`` entries; when it is full, expired counters
(unseen for ``ttl`` ticks) make room first, then the stalest counters (oldest sighting,
then fewest shows) give way, so a flood of one-off keys never locks new keys out for good.
Only keys beyond the whole capacity in one call are rejected. The caller counts both. Not
thread-safe: the owning table holds its lock around every call.
"""

from __future__ import annotations

import numpy as np

from hoststore import _index as ix
from hoststore import _kernels as K

ENTRY = np.dtype(
    [("key", "<i8"), ("show", "<u2"), ("click", "<u2"), ("last_seen", "<i4")], align=True
)
COLUMNS = ("key", "show", "click", "last_seen")
_U16_MAX = np.iinfo(np.uint16).max
_MIN_ENTRIES = 1024


def _saturate(x: np.ndarray) -> np.ndarray:
    return np.minimum(x, _U16_MAX).astype(np.uint16)


class PendingCounters:
    def __init__(self, max_entries: int):
        self.max_entries = max_entries
        self.cap = 0
        self._alloc(min(_MIN_ENTRIES, max_entries))

    def _alloc(self, cap: int) -> None:
        old = self.cap
        entries = np.empty(cap, ENTRY)
        entries["last_seen"] = -1  # -1: free entry
        if old:
            entries[:old] = self._entries
        self._entries = entries
        self.keys = entries["key"]
        self.show = entries["show"]
        self.click = entries["click"]
        self.last_seen = entries["last_seen"]
        self.cap = cap
        self._index = ix.new_index(cap)
        ix.rebuild(self._index, self.keys, self.last_seen >= 0)
        # A stack of free entries (popped from the end): the new ones below the old ones.
        fresh = np.arange(cap - 1, old - 1, -1, dtype=np.int64)
        self._free = np.concatenate([fresh, self._free]) if old else fresh

    def __len__(self) -> int:
        return self.cap - len(self._free)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Each key's entry, or -1."""
        entries = np.empty(len(keys), np.int64)
        if len(self):
            ix.find_many(self._index, self.keys, keys, entries)
        else:
            entries[:] = -1
        return entries

    def set_shows(self, entries: np.ndarray, shows: np.ndarray, clock: int) -> None:
        self.show[entries] = _saturate(shows)
        self.last_seen[entries] = clock

    def add(self, keys: np.ndarray, shows: np.ndarray, clock: int, ttl: int) -> dict[str, int]:
        """New entries for ``keys`` (distinct, not present); returns how many were rejected,
        expired to make room and displaced (the stalest giving way)."""
        out = {"rejected": 0, "expired_pending": 0, "displaced_pending": 0}
        if not len(keys):
            return out
        if len(self._free) < len(keys) and self.cap < self.max_entries:
            want = max(int(self.cap * 2), self.cap - len(self._free) + len(keys))
            self._alloc(min(self.max_entries, want))
        if len(self._free) < len(keys):
            out["expired_pending"] = self.expire(clock, ttl)
        short = len(keys) - len(self._free)
        if short > 0:
            live = np.flatnonzero(self.last_seen >= 0)
            order = np.lexsort((self.keys[live], self.show[live], self.last_seen[live]))
            stalest = live[order[:short]]
            self.drop(stalest)
            out["displaced_pending"] = len(stalest)
        room = min(len(keys), len(self._free))
        entries = self._take(room)
        K.insert_rows(self._index, self.keys, keys[:room], entries)
        self.show[entries] = _saturate(shows[:room])
        self.click[entries] = 0
        self.last_seen[entries] = clock
        out["rejected"] = len(keys) - room
        return out

    def _take(self, k: int) -> np.ndarray:
        entries = self._free[len(self._free) - k :][::-1]
        self._free = self._free[: len(self._free) - k]
        return entries

    def drop(self, entries: np.ndarray) -> None:
        if len(entries):
            ix.delete_many(self._index, self.keys, self.keys[entries])
            self.last_seen[entries] = -1
            self._free = np.concatenate([self._free, entries[::-1]])

    def expire(self, clock: int, ttl: int) -> int:
        """Drops the counters unseen for ``ttl`` ticks; returns how many."""
        old = np.flatnonzero((self.last_seen >= 0) & (clock - self.last_seen >= ttl))
        self.drop(old)
        return len(old)

    def count(self, keys: np.ndarray, shows: np.ndarray, clicks: np.ndarray, clock: int) -> None:
        """Adds shows and clicks (per occurrence, keys may repeat) to the keys that have an
        entry; other keys are ignored."""
        uniq, inverse, _ = ix.unique_with_inverse(keys)
        entries = self.find(uniq)
        known = entries >= 0
        s = np.bincount(inverse, weights=shows, minlength=len(uniq))[known]
        c = np.bincount(inverse, weights=clicks, minlength=len(uniq))[known]
        e = entries[known]
        self.show[e] = _saturate(self.show[e] + np.rint(s))
        self.click[e] = _saturate(self.click[e] + np.rint(c))
        self.last_seen[e] = clock

    def stats(self, keys: np.ndarray) -> dict[str, np.ndarray]:
        """Each key's counters (show, click; -1 where the key is not pending)."""
        e = self.find(keys)
        ok = e >= 0
        out = {"pending": ok}
        for c, col in (("show", self.show), ("click", self.click)):
            out[c] = np.full(len(keys), -1, np.int64)
            out[c][ok] = col[e[ok]]
        return out

    def export(self) -> dict[str, np.ndarray]:
        e = np.flatnonzero(self.last_seen >= 0)
        return {c: self._entries[c][e] for c in COLUMNS}

    def replace(self, columns: dict[str, np.ndarray]) -> None:
        """Replaces every counter by ``columns`` (as :meth:`export` gives them)."""
        n = len(columns["key"])
        self.cap = 0
        self._alloc(max(n, min(_MIN_ENTRIES, self.max_entries)))
        entries = self._take(n)
        K.insert_rows(self._index, self.keys, columns["key"].astype(np.int64), entries)
        for c in COLUMNS[1:]:
            self._entries[c][entries] = columns[c]

    def memory_bytes(self) -> tuple[int, int]:
        """(entry bytes, index and free-list bytes)."""
        return self._entries.nbytes, self._index.nbytes + self._free.nbytes
