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
        self.cap = self._n_free = 0  # (no entries yet, none free)
        self._head = self._tail = -1
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
        # Free entries form a stack linked through their key field (a free entry has no
        # key): taken from the head, dropped entries pushed onto it, new ones appended
        # after the old ones. Not an array of free entries: that cost 8 bytes an entry
        # (the 16-byte entry is the budget), and every batch drops its admitted keys'
        # entries, which copied a free list of millions of entries (~1 ms a batch).
        self.keys[old : cap - 1] = np.arange(old + 1, cap, dtype=np.int64)
        if cap > old:
            self.keys[cap - 1] = -1
            if self._n_free:
                self.keys[self._tail] = old
            else:
                self._head = old
            self._tail = cap - 1
        self._n_free += cap - old

    def __len__(self) -> int:
        return self.cap - self._n_free

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
        if self._n_free < len(keys) and self.cap < self.max_entries:
            want = max(int(self.cap * 2), len(self) + len(keys))
            self._alloc(min(self.max_entries, want))
        if self._n_free < len(keys):
            out["expired_pending"] = self.expire(clock, ttl)
        short = len(keys) - self._n_free
        if short > 0:
            live = np.flatnonzero(self.last_seen >= 0)
            order = np.lexsort((self.keys[live], self.show[live], self.last_seen[live]))
            stalest = live[order[:short]]
            self.drop(stalest)
            out["displaced_pending"] = len(stalest)
        room = min(len(keys), self._n_free)
        entries = self._take(room)
        K.insert_rows(self._index, self.keys, keys[:room], entries)
        self.show[entries] = _saturate(shows[:room])
        self.click[entries] = 0
        self.last_seen[entries] = clock
        out["rejected"] = len(keys) - room
        return out

    def _take(self, k: int) -> np.ndarray:
        entries = np.empty(k, np.int64)
        self._head = K.pop_links(self.keys, self._head, entries)
        self._n_free -= k
        return entries

    def drop(self, entries: np.ndarray) -> None:
        if len(entries):
            ix.delete_many(self._index, self.keys, self.keys[entries])
            self.last_seen[entries] = -1
            self.keys[entries[:-1]] = entries[1:]  # entries[0] is taken first
            self.keys[entries[-1]] = self._head
            if not self._n_free:
                self._tail = entries[-1]
            self._head = entries[0]
            self._n_free += len(entries)

    def expire(self, clock: int, ttl: int) -> int:
        """Drops the counters unseen for ``ttl`` ticks; returns how many."""
        old = np.flatnonzero((self.last_seen >= 0) & (clock - self.last_seen >= ttl))
        self.drop(old)
        return len(old)

    def count(self, keys: np.ndarray, shows: np.ndarray, clicks: np.ndarray, clock: int,
              distinct: bool = False) -> None:  # fmt: skip
        """Adds shows and clicks (per occurrence, keys may repeat unless ``distinct``) to
        the keys that have an entry; other keys are ignored."""
        if not distinct:  # (a deduped batch's push needs no unique pass and no sums)
            keys, inverse, _ = ix.unique_with_inverse(keys)
            shows = np.bincount(inverse, weights=shows, minlength=len(keys))
            clicks = np.bincount(inverse, weights=clicks, minlength=len(keys))
        entries = self.find(keys)
        known = entries >= 0
        s, c = shows[known], clicks[known]
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
        self.cap = self._n_free = 0  # (every entry allocated again, all free)
        self._alloc(max(n, min(_MIN_ENTRIES, self.max_entries)))
        entries = self._take(n)
        K.insert_rows(self._index, self.keys, columns["key"].astype(np.int64), entries)
        for c in COLUMNS[1:]:
            self._entries[c][entries] = columns[c]

    def memory_bytes(self) -> tuple[int, int]:
        """(entry bytes, index bytes)."""
        return self._entries.nbytes, self._index.nbytes
