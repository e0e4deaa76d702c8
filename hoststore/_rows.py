"""Row slots of a table: struct-of-arrays storage, the key index and the free list.

Per row: a 32-byte record (key and statistics: one cache line serves the index's key
comparison and every statistic update; the statistics are those of Paddle's feature value:
show, click, last seen, and the delta score that serving delta exports filter on), the
embedding and the optimizer state, each in reserved memory that grows without copies
(:mod:`hoststore._row_storage`). Freed slots are reused. Not thread-safe: the owning table
holds its lock around every call.
"""

from __future__ import annotations

import time

import numpy as np

from hoststore import _index as ix
from hoststore import _kernels as K
from hoststore._row_storage import GrowableRows

META = np.dtype(
    [("key", "<i8"), ("show", "<f4"), ("click", "<f4"), ("last_seen", "<i4"),
     ("created", "<i4"), ("delta_score", "<f4"), ("gen", "<u4")],
    align=True,
)  # fmt: skip
STAT_COLUMNS = ("show", "click", "last_seen", "created", "delta_score")
_GROWTH = 1.5
_CHUNK = 4096
_EXPORT_CHUNK = 1 << 16  # rows copied per hold of the table's lock by a snapshot


class RowSlots:
    """``cap`` row slots of one table; ``high`` of them ever used, ``free`` reusable.

    ``state`` is the optimizer's state as a tuple of (cap, ...) arrays, named by
    ``state_names`` (the fields of the optimizer's state NamedTuple).
    """

    def __init__(self, dim: int, fresh_state: tuple[np.ndarray, ...], capacity: int):
        self.dim = dim
        self.state_names = tuple(getattr(fresh_state, "_fields", ())) or tuple(
            f"state_{i}" for i in range(len(fresh_state))
        )
        self._storage = (
            GrowableRows((), META),
            GrowableRows((dim,), np.float32),
            *(GrowableRows(f.shape[1:], f.dtype) for f in fresh_state),
        )
        self.high = 0
        self.free = np.empty(0, np.int64)
        # (Re)sizings: count, seconds spent (index rebuilds, under the table's lock) and
        # how many of them had to copy rows (only when a reservation ran out).
        self.growth = {"resizes": 0, "seconds": 0.0, "row_copies": 0}
        self.resize(capacity)

    def resize(self, cap: int) -> None:
        """Sizes storage for ``cap`` rows and rebuilds the index: the rows themselves grow
        in place, so the work here is the index rebuild, not a row copy."""
        t0 = time.perf_counter()
        meta, self.emb, *state = (rows.resize(cap, self.high) for rows in self._storage)
        self.meta = meta
        self.keys = meta["key"]
        self.show = meta["show"]
        self.click = meta["click"]
        self.last_seen = meta["last_seen"]
        self.created = meta["created"]  # -1: free slot
        # Paddle's DeltaScore: the show/click score pushed since the row's last serving
        # delta export (not decayed; an export with a delta threshold resets what it emits)
        self.delta_score = meta["delta_score"]
        self.gen = meta["gen"]  # the table generation of the row's last change
        self.state = tuple(state)
        self.cap = cap
        self.index = ix.new_index(cap, tagged=True)
        ix.rebuild(self.index, self.keys, self.created[: self.high] >= 0)
        self.growth["resizes"] += 1
        self.growth["seconds"] += time.perf_counter() - t0
        self.growth["row_copies"] = sum(rows.copies for rows in self._storage)

    def __len__(self) -> int:
        return self.high - len(self.free)

    def take(self, k: int) -> np.ndarray:
        """``k`` slots for new rows: freed ones first, then fresh ones (growing by 1.5x)."""
        n_free = len(self.free)
        if self.high + max(0, k - n_free) > self.cap:
            need = self.high + k - n_free
            self.resize(max(need, int(self.cap * _GROWTH)))
        from_free = min(k, n_free)
        rows = self.free[n_free - from_free :][::-1]
        self.free = self.free[: n_free - from_free]
        fresh = np.arange(self.high, self.high + k - from_free, dtype=np.int64)
        self.high += k - from_free
        return np.concatenate([rows, fresh])

    def apply_optimizer(self, opt, rows, grads, counts, hparams, bounds) -> None:
        """The optimizer on ``rows`` (distinct): gathered into blocks, updated, scattered.

        Blocks of _CHUNK rows stay in L2 between the gather and the scatter, and the
        optimizer's loop runs over contiguous memory instead of waiting on random rows.
        """
        columns = (self.emb, *self.state)
        as_2d = [c.reshape(len(c), -1) for c in columns]  # views: (cap, width) each
        for lo in range(0, len(rows), _CHUNK):
            r = rows[lo : lo + _CHUNK]
            blocks = [np.empty((len(r), *c.shape[1:]), c.dtype) for c in columns]
            for c, b in zip(as_2d, blocks, strict=True):
                K.gather_rows(c, r, b.reshape(len(r), -1))
            hi = lo + len(r)
            opt.apply(blocks[0], tuple(blocks[1:]), grads[lo:hi], counts[lo:hi], hparams,
                      *bounds)  # fmt: skip
            for c, b in zip(as_2d, blocks, strict=True):
                K.scatter_rows(c, r, b.reshape(len(r), -1))

    def create(self, keys, shows, clicks, clock: int, fresh_state, gen: int, delta_scores
               ) -> np.ndarray:  # fmt: skip
        """Rows for new ``keys`` with their statistics and fresh optimizer state (the
        caller writes the initial embeddings); returns the rows."""
        rows = self.take(len(keys))
        self.insert(keys, rows)
        for arr, init in zip(self.state, fresh_state, strict=True):
            arr[rows] = init
        self.show[rows] = shows
        self.click[rows] = clicks
        self.last_seen[rows] = clock
        self.created[rows] = clock
        self.delta_score[rows] = delta_scores
        self.gen[rows] = gen
        return rows

    def insert(self, keys: np.ndarray, rows: np.ndarray) -> None:
        K.insert_rows(self.index, self.keys, keys, rows)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Each key's row, or -1."""
        rows = np.empty(len(keys), np.int64)
        ix.find_many(self.index, self.keys, keys, rows)
        return rows

    def delete(self, rows: np.ndarray) -> np.ndarray:
        """Frees ``rows``; returns their keys."""
        keys = self.keys[rows].copy()
        ix.delete_many(self.index, self.keys, keys)
        self.created[rows] = -1
        self.free = np.concatenate([self.free, rows[::-1]])
        return keys

    def stats(self, rows: np.ndarray, show: np.ndarray, click: np.ndarray) -> dict:
        """Statistics of ``rows`` (-1: absent, reads NaN/-1); ``show``/``click`` are the
        present rows' counts as the caller brought them to its clock."""
        ok = rows >= 0
        out = {"present": ok, "show": np.full(len(rows), np.nan, np.float32),
               "click": np.full(len(rows), np.nan, np.float32)}  # fmt: skip
        out["show"][ok], out["click"][ok] = show, click
        for c in ("last_seen", "created"):
            out[c] = np.full(len(rows), -1, np.int64)
            out[c][ok] = self.column(c)[rows[ok]]
        out["delta_score"] = np.full(len(rows), np.nan, np.float32)
        out["delta_score"][ok] = self.delta_score[rows[ok]]
        return out

    def live(self) -> np.ndarray:
        return np.flatnonzero(self.created[: self.high] >= 0)

    # Columns of a row as snapshots store them.

    def columns(self) -> list[str]:
        return ["key", "emb", *self.state_names, *STAT_COLUMNS]

    def column(self, name: str) -> np.ndarray:
        if name == "emb":
            return self.emb
        if name in self.state_names:
            return self.state[self.state_names.index(name)]
        return self.meta[name]

    def layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Each snapshot column's dtype and per-row shape."""
        return {c: (self.column(c).dtype, self.column(c).shape[1:]) for c in self.columns()}

    def copy_out(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Every column of ``rows``."""
        return {c: self.column(c)[rows] for c in self.columns()}

    def iter_out(self, rows: np.ndarray, lock, held: dict):
        """Every column of ``rows``, a chunk at a time, each copied under ``lock``;
        ``held["seconds"]`` keeps the longest the lock was held."""
        for lo in range(0, len(rows), _EXPORT_CHUNK):
            t0 = time.perf_counter()
            with lock:
                part = rows[lo : lo + _EXPORT_CHUNK]
                chunk = {c: self.column(c)[part] for c in self.columns()}
            held["seconds"] = max(held["seconds"], time.perf_counter() - t0)
            yield chunk

    def memory_bytes(self) -> tuple[int, int]:
        """(row bytes, index and free-list bytes)."""
        rows = sum(a.nbytes for a in (self.meta, self.emb, *self.state))
        return rows, self.index.nbytes + self.free.nbytes

    def bytes_per_row(self) -> float:
        """Bytes of one row slot at full capacity, index share included."""
        per = META.itemsize + 4 * self.dim + sum(s[:1].nbytes for s in self.state)
        return per + self.index.itemsize / ix.MAX_LOAD
