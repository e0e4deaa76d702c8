"""EmbeddingTable: a growing int64-keyed embedding table with its optimizer and policies.

Storage is struct-of-arrays over row slots: keys, embedding rows, optimizer state and per-row
statistics (decayed show/click, last-seen clock, creation clock, update count and a
changed-since-snapshot marker). A numba hash index maps keys to slots; freed slots are
reused. Keys waiting for admission live in a separate bounded counter table (16 bytes of
entry plus an index slot each), never in a full row.

Semantics of one training step:

- ``pull(ids, train=True)`` is a sighting: each occurrence adds 1 to the key's show,
  refreshes its last-seen clock, and may admit a new key (creating its row).
- ``push(ids, grads, clicks=...)`` sums the gradients of duplicate ids, applies the sparse
  optimizer to admitted rows, and adds clicks (and optional extra shows) to the key's
  counters, admitted or pending; a key that was never sighted is ignored.
"""

from __future__ import annotations

import collections
import itertools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from hoststore import _table_kernels as K
from hoststore import index as ix
from hoststore._row_storage import GrowableRows
from hoststore.config import TableConfig
from hoststore.hashing import ADMIT_SALT, mix64_np, seed_salt, unit_float_np
from hoststore.initializers import KIND_CODES, table_salt, write_initial_rows

_U16_MAX = np.iinfo(np.uint16).max
ROW_META = np.dtype(
    [("key", "<i8"), ("show", "<f4"), ("click", "<f4"), ("last_seen", "<i4"),
     ("created", "<i4"), ("updates", "<u4"), ("changed", "u1")],
    align=True,
)  # fmt: skip
PENDING_ENTRY = np.dtype(
    [("key", "<i8"), ("show", "<u2"), ("click", "<u2"), ("last_seen", "<i4")], align=True
)
# Columns a pull ``with_counts`` puts before the embedding: show, click.
COUNT_COLUMNS = 2
_GROWTH = 1.5
_CHUNK = 4096
_RECENT_PULLS = 4
_NO_HINT = np.empty(0, np.int64)
# A read-only pull is split over the lookup threads in chunks of at least this many ids;
# below it the hand-off costs more than it saves.
_MIN_IDS_PER_CHUNK = 32768
# Several chunks per thread, so a thread on a busier core simply takes fewer of them.
_CHUNKS_PER_THREAD = 4


def check_ids(ids: Any, what: str = "ids") -> np.ndarray:
    """A contiguous int64 view of a 1-D int64/uint64 array, or a ValueError naming the flaw."""
    if not isinstance(ids, np.ndarray):
        raise ValueError(f"{what} must be a numpy array of int64, got {type(ids).__name__}")
    if ids.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {ids.shape}")
    if ids.dtype == np.uint64:
        return np.ascontiguousarray(ids).view(np.int64)
    if ids.dtype != np.int64:
        raise ValueError(f"{what} must have dtype int64 (or uint64), got {ids.dtype}")
    return np.ascontiguousarray(ids)


def _check_per_id(x: Any, n: int, what: str) -> np.ndarray:
    if x is None:
        return np.zeros(n, np.float32)
    x = np.asarray(x)
    if x.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},) like ids, got {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got {x.dtype}")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(f"{what} must be finite and non-negative")
    return x


def check_push(config: TableConfig, ids, grads, shows, clicks):
    """Validated, normalized push arguments, or a ValueError naming the problem."""
    ids = check_ids(ids)
    n = len(ids)
    if not isinstance(grads, np.ndarray) or not np.issubdtype(grads.dtype, np.floating):
        raise ValueError("grads must be a floating-point numpy array")
    if grads.shape != (n, config.dim):
        raise ValueError(
            f"grads must have shape ({n}, {config.dim}) for {n} ids in table "
            f"{config.name!r} (dim {config.dim}), got {grads.shape}"
        )
    grads = np.ascontiguousarray(grads, dtype=np.float32)
    if not np.all(np.isfinite(grads)):
        raise ValueError(f"grads for table {config.name!r} contain NaN or Inf")
    return ids, grads, _check_per_id(shows, n, "shows"), _check_per_id(clicks, n, "clicks")


class EmbeddingTable:
    """A host-resident embedding table; thread-safe (one lock, kernels release the GIL).

    ``lookup_threads`` > 1 splits large read-only pulls (``train=False``: evaluation,
    serving) over that many threads; lookups are bound by memory latency, so each core
    adds its own misses in flight. Training pulls and pushes stay on the calling thread
    (run shards in parallel with :class:`hoststore.ShardedTable` instead).
    """

    def __init__(self, config: TableConfig, *, lookup_threads: int = 1):
        self.config = config
        self._lookup_pool: ThreadPoolExecutor | None = None
        self.lookup_threads = lookup_threads
        self._opt = config.optimizer
        self._dim = config.dim
        self._lock = threading.RLock()
        self._clock = 0
        self._train_pulls = 0
        self._init_salt = table_salt(config.seed)
        self._admit_salt = seed_salt(config.seed, ADMIT_SALT)
        self._init_code = KIND_CODES[config.initializer.kind]
        self._bounds = (float(config.weight_bounds[0]), float(config.weight_bounds[1]))
        self.totals = {"admitted": 0, "evicted": 0, "rejected": 0, "expired_pending": 0}
        self._evicted_keys: list[np.ndarray] = []
        # Rows found by the last few training pulls: the push of the same ids (the usual
        # next call) starts from them instead of probing the index again.
        self._recent: collections.deque = collections.deque(maxlen=_RECENT_PULLS)
        # Row storage (re)sizings: count, seconds spent (index rebuilds, under the lock) and
        # how many of them had to copy rows (only when a reservation ran out).
        self.growth = {"resizes": 0, "seconds": 0.0, "row_copies": 0}
        self._alloc_rows(max(16, config.initial_capacity))
        self._alloc_pending(min(1024, config.admission.max_pending))

    @property
    def lookup_threads(self) -> int:
        return self._lookup_threads

    @lookup_threads.setter
    def lookup_threads(self, n: int) -> None:
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"lookup_threads must be an int >= 1, got {n!r}")
        self._lookup_threads = n
        if self._lookup_pool is not None:
            self._lookup_pool.shutdown(wait=False)
        self._lookup_pool = None
        if n > 1:
            self._lookup_pool = ThreadPoolExecutor(n, thread_name_prefix="hoststore-lookup")

    # ------------------------------------------------------------------ storage

    def _alloc_rows(self, cap: int) -> None:
        """Sizes row storage for ``cap`` rows and rebuilds the index.

        Rows live in reserved memory (see :mod:`hoststore._row_storage`): growing widens the
        views in place, so the work under the lock is the index rebuild, not a row copy.
        """
        t0 = time.perf_counter()
        if not hasattr(self, "_storage"):
            fresh_state = self._opt.init(1, self._dim)
            self._storage = (
                GrowableRows((), ROW_META),
                GrowableRows((self._dim,), np.float32),
                *(GrowableRows(f.shape[1:], f.dtype) for f in fresh_state),
            )
            self._high = 0
            self._free = np.empty(0, np.int64)
        meta, self._emb, *state = (rows.resize(cap, self._high) for rows in self._storage)
        # Key and statistics share one 32-byte record per row: one cache line serves the
        # index's key comparison and every statistic update. The named fields are views.
        self._meta = meta
        self._keys = meta["key"]
        self._show = meta["show"]
        self._click = meta["click"]
        self._last_seen = meta["last_seen"]
        self._created = meta["created"]  # -1: free slot
        self._updates = meta["updates"]
        self._changed = meta["changed"]
        self._state = tuple(state)
        self._cap = cap
        self._index = ix.new_index(cap, tagged=True)
        ix.rebuild(self._index, self._keys, self._created[: self._high] >= 0)
        self.growth["resizes"] += 1
        self.growth["seconds"] += time.perf_counter() - t0
        self.growth["row_copies"] = sum(rows.copies for rows in self._storage)

    def _alloc_pending(self, cap: int) -> None:
        old = getattr(self, "_pcap", 0)
        pending = np.empty(cap, PENDING_ENTRY)
        pending["last_seen"] = -1  # -1: free entry
        if old:
            pending[:old] = self._pending
        self._pending = pending
        self._pkeys = pending["key"]
        self._pshow = pending["show"]
        self._pclick = pending["click"]
        self._plast = pending["last_seen"]
        self._pcap = cap
        self._pindex = ix.new_index(cap)
        ix.rebuild(self._pindex, self._pkeys, self._plast >= 0)
        # A stack of free entries (popped from the end): the new ones below the old ones.
        fresh = np.arange(cap - 1, old - 1, -1, dtype=np.int64)
        self._pfree = np.concatenate([fresh, self._pfree]) if old else fresh

    def _take_rows(self, k: int) -> np.ndarray:
        n_free = len(self._free)
        if self._high + max(0, k - n_free) > self._cap:
            need = self._high + k - n_free
            self._alloc_rows(max(need, int(self._cap * _GROWTH)))
        from_free = min(k, n_free)
        rows = self._free[n_free - from_free :][::-1]
        self._free = self._free[: n_free - from_free]
        fresh = np.arange(self._high, self._high + k - from_free, dtype=np.int64)
        self._high += k - from_free
        return np.concatenate([rows, fresh])

    # ------------------------------------------------------------------ pull

    def pull(self, ids: np.ndarray, *, train: bool, with_counts: bool = False) -> np.ndarray:
        """Rows for ``ids`` as a new (n, dim) float32 array, in the order given.

        ``train=True`` counts a sighting of each occurrence and may create rows (subject to
        admission); ``train=False`` reads only. Keys without a row read the default row.
        ``with_counts`` prepends each key's (show, click) counters as they stood before
        this pull (decayed to the clock; a pending key's counters; 0 for unknown keys):
        an (n, 2 + dim) array, the layout of Paddle's pull with CVM, which a model turns
        into log(show + 1), log(click + 1) - log(show + 1) features.
        """
        ids = check_ids(ids)
        n = len(ids)
        out = np.empty((n, COUNT_COLUMNS * with_counts + self._dim), np.float32)
        emb_out = out[:, COUNT_COLUMNS:] if with_counts else out
        rows = np.empty(n, np.int64)
        with self._lock:
            if with_counts:
                self._counts(ids, out[:, :COUNT_COLUMNS])
            n_miss = self._pull_existing(ids, emb_out, rows, train)
            if train:
                self._train_pulls += 1
                if n_miss:
                    miss = np.flatnonzero(rows < 0)
                    new_rows = self._admit(ids[miss])
                    rows[miss] = new_rows
                    got = new_rows >= 0
                    emb_out[miss[got]] = self._emb[new_rows[got]]
                self._recent.append((ids, rows))
        return out

    def _counts(self, ids: np.ndarray, out: np.ndarray) -> None:
        """out[:, 0], out[:, 1] = show, click of each id now (row, pending entry or 0)."""
        rows = np.empty(len(ids), np.int64)
        ix.find_many(self._index, self._keys, ids, rows)
        ok = rows >= 0
        out[:] = 0.0
        out[ok, 0], out[ok, 1] = self._decayed_counts(rows[ok])
        if self.pending_count():
            e = np.empty(len(ids), np.int64)
            ix.find_many(self._pindex, self._pkeys, ids, e)
            pend = e >= 0
            out[pend, 0] = self._pshow[e[pend]]
            out[pend, 1] = self._pclick[e[pend]]

    def _pull_existing(self, ids, out, rows, train: bool) -> int:
        def run(lo: int, hi: int) -> int:
            return K.pull_existing(
                self._index, self._keys, self._emb, self._show, self._click, self._last_seen,
                self._changed, ids[lo:hi], out[lo:hi], rows[lo:hi],
                self.config.admission.default_value, train, self._clock,
                self.config.eviction.decay,
            )  # fmt: skip

        n = len(ids)
        parts = min(self._lookup_threads * _CHUNKS_PER_THREAD, n // _MIN_IDS_PER_CHUNK)
        if train or self._lookup_threads < 2 or parts < 2:
            return run(0, n)
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)
        futures = [self._lookup_pool.submit(run, lo, hi) for lo, hi in itertools.pairwise(bounds)]
        return sum(f.result() for f in futures)

    def _admit(self, miss_ids: np.ndarray) -> np.ndarray:
        """Admission for ids without a row; returns each one's new row or -1."""
        adm = self.config.admission
        uniq, inverse, counts = ix.unique_with_inverse(miss_ids)
        shows = counts.astype(np.float32)
        clicks = np.zeros(len(uniq), np.float32)
        if adm.kind == "always":
            admit = np.ones(len(uniq), bool)
        elif adm.kind == "probability":
            admit = self._draws(uniq) < 1.0 - (1.0 - adm.p) ** counts
        else:
            entries = np.empty(len(uniq), np.int64)
            ix.find_many(self._pindex, self._pkeys, uniq, entries)
            known = entries >= 0
            e = entries[known]
            shows[known] += self._pshow[e]
            clicks[known] = self._pclick[e]
            if adm.kind == "count_filter":
                admit = shows >= adm.n
            else:
                score = (shows - clicks) * adm.nonclk_coeff + clicks * adm.click_coeff
                admit = score >= adm.threshold
            # Admitted keys leave the pending table; the rest update or join it.
            self._drop_pending(entries[known & admit])
            stay = known & ~admit
            self._pshow[entries[stay]] = np.minimum(shows[stay], _U16_MAX).astype(np.uint16)
            self._plast[entries[stay]] = self._clock
            self._add_pending(uniq[~known & ~admit], shows[~known & ~admit])
        rows_of_uniq = np.full(len(uniq), -1, np.int64)
        if admit.any():
            rows_of_uniq[admit] = self._create_rows(uniq[admit], shows[admit], clicks[admit])
        return rows_of_uniq[inverse]

    def _draws(self, uniq: np.ndarray) -> np.ndarray:
        """Uniform [0, 1) draws, a function of (seed, key, number of training pulls)."""
        nonce = mix64_np(np.array([self._train_pulls], np.uint64) ^ self._admit_salt)[0]
        return unit_float_np(mix64_np(uniq.view(np.uint64) ^ nonce))

    def _create_rows(self, keys: np.ndarray, shows: np.ndarray, clicks: np.ndarray) -> np.ndarray:
        rows = self._take_rows(len(keys))
        K.insert_rows(self._index, self._keys, keys, rows)
        write_initial_rows(
            self._emb, rows, keys, self._init_code, self.config.initializer.scale, self._init_salt
        )
        for arr, init in zip(self._state, self._opt.init(len(rows), self._dim), strict=True):
            arr[rows] = init
        self._show[rows] = shows
        self._click[rows] = clicks
        self._last_seen[rows] = self._clock
        self._created[rows] = self._clock
        self._updates[rows] = 0
        self._changed[rows] = 1
        self.totals["admitted"] += len(rows)
        return rows

    # ------------------------------------------------------------------ pending counters

    def _add_pending(self, keys: np.ndarray, shows: np.ndarray) -> None:
        if not len(keys):
            return
        adm = self.config.admission
        if len(self._pfree) < len(keys) and self._pcap < adm.max_pending:
            want = max(int(self._pcap * 2), self._pcap - len(self._pfree) + len(keys))
            self._alloc_pending(min(adm.max_pending, want))
        if len(self._pfree) < len(keys):
            self._expire_pending()
        room = min(len(keys), len(self._pfree))
        self.totals["rejected"] += len(keys) - room
        keys, shows = keys[:room], shows[:room]
        entries = self._pfree[len(self._pfree) - room :][::-1]
        self._pfree = self._pfree[: len(self._pfree) - room]
        K.insert_rows(self._pindex, self._pkeys, keys, entries)
        self._pshow[entries] = np.minimum(shows, _U16_MAX).astype(np.uint16)
        self._pclick[entries] = 0
        self._plast[entries] = self._clock

    def _drop_pending(self, entries: np.ndarray) -> None:
        if len(entries):
            ix.delete_many(self._pindex, self._pkeys, self._pkeys[entries])
            self._plast[entries] = -1
            self._pfree = np.concatenate([self._pfree, entries[::-1]])

    def _expire_pending(self) -> int:
        live = self._plast >= 0
        old = np.flatnonzero(
            live & (self._clock - self._plast >= self.config.admission.pending_ttl)
        )
        self._drop_pending(old)
        self.totals["expired_pending"] += len(old)
        return len(old)

    # ------------------------------------------------------------------ push

    def push(
        self,
        ids: np.ndarray,
        grads: np.ndarray,
        *,
        shows: np.ndarray | None = None,
        clicks: np.ndarray | None = None,
        assume_unique: bool = False,
    ) -> None:
        """Applies the optimizer to the rows of ``ids`` with ``grads`` (n, dim).

        Duplicate ids have their gradients, shows and clicks summed first. ``clicks`` (and
        optional extra ``shows``) are per-occurrence counts added to the key's statistics;
        pending keys keep them toward admission, their gradients are dropped.
        ``assume_unique=True`` is a promise that ids has no duplicates (a trainer's deduped
        batch): it skips the dedup pass; a duplicate would then be applied twice in a row.
        """
        self.push_checked(*check_push(self.config, ids, grads, shows, clicks), assume_unique)

    def push_checked(
        self,
        ids: np.ndarray,
        grads: np.ndarray,
        shows: np.ndarray,
        clicks: np.ndarray,
        assume_unique: bool = False,
    ) -> None:
        """``push`` for arguments already normalized by :func:`check_push`."""
        if assume_unique:
            return self._push_unique(ids, grads, shows, clicks)
        with self._lock:
            rows, agg, counts, missing = K.gather_push(
                self._index, self._keys, ids, grads, shows, clicks, self._clock,
                self.config.eviction.decay, self._show, self._click, self._last_seen,
                self._changed, self._updates,
            )  # fmt: skip
            self._apply_optimizer(rows, agg, counts)
            if len(missing) and self.config.admission.uses_counters:
                self._count_pending(ids[missing], shows[missing], clicks[missing])

    def _push_unique(self, ids, grads, shows, clicks) -> None:
        with self._lock:
            hint = next((r for i, r in reversed(self._recent)
                         if i is ids or (len(i) == len(ids) and np.array_equal(i, ids))),
                        _NO_HINT)  # fmt: skip
            rows, n_miss = K.touch_push_unique(
                self._index, self._keys, self._created, ids, hint, shows, clicks, self._clock,
                self.config.eviction.decay, self._show, self._click, self._last_seen,
                self._changed, self._updates,
            )  # fmt: skip
            if n_miss:
                found = rows >= 0
                self._apply_optimizer(rows[found], grads[found], np.ones(found.sum(), np.float32))
                if self.config.admission.uses_counters:
                    self._count_pending(ids[~found], shows[~found], clicks[~found])
            else:
                self._apply_optimizer(rows, grads, np.ones(len(rows), np.float32))

    def _apply_optimizer(self, rows: np.ndarray, grads: np.ndarray, counts: np.ndarray) -> None:
        """Gathers touched rows into blocks, updates them, scatters them back.

        Blocks of _CHUNK rows stay in L2 between the gather and the scatter, and the
        optimizer's loop runs over contiguous memory instead of waiting on random rows.
        """
        hp = self._opt.hparams(self._clock)
        columns = (self._emb, *self._state)
        as_2d = [c.reshape(len(c), -1) for c in columns]  # views: (cap, width) each
        for lo in range(0, len(rows), _CHUNK):
            r = rows[lo : lo + _CHUNK]
            blocks = [np.empty((len(r), *c.shape[1:]), c.dtype) for c in columns]
            for c, b in zip(as_2d, blocks, strict=True):
                K.gather_rows(c, r, b.reshape(len(r), -1))
            hi = lo + len(r)
            self._opt.apply(blocks[0], tuple(blocks[1:]), grads[lo:hi], counts[lo:hi], hp,
                            *self._bounds)  # fmt: skip
            for c, b in zip(as_2d, blocks, strict=True):
                K.scatter_rows(c, r, b.reshape(len(r), -1))

    def _count_pending(self, keys: np.ndarray, shows: np.ndarray, clicks: np.ndarray) -> None:
        uniq, inverse, _ = ix.unique_with_inverse(keys)
        entries = np.empty(len(uniq), np.int64)
        ix.find_many(self._pindex, self._pkeys, uniq, entries)
        known = entries >= 0
        s = np.bincount(inverse, weights=shows, minlength=len(uniq))[known]
        c = np.bincount(inverse, weights=clicks, minlength=len(uniq))[known]
        e = entries[known]
        self._pshow[e] = np.minimum(self._pshow[e] + np.rint(s), _U16_MAX).astype(np.uint16)
        self._pclick[e] = np.minimum(self._pclick[e] + np.rint(c), _U16_MAX).astype(np.uint16)
        self._plast[e] = self._clock

    # ------------------------------------------------------------------ clock and eviction

    @property
    def clock(self) -> int:
        return self._clock

    def advance_clock(self, n: int = 1) -> None:
        """Ticks the stream clock (a pass, an hour or a day: the caller's unit)."""
        if n < 0:
            raise ValueError(f"advance_clock needs n >= 0, got {n}")
        with self._lock:
            self._clock += int(n)

    def live_rows(self) -> np.ndarray:
        return np.flatnonzero(self._created[: self._high] >= 0)

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Decayed show/click score of rows at the current clock (float64)."""
        ev = self.config.eviction
        show, click = (c.astype(np.float64) for c in self._decayed_counts(rows))
        return (show - click) * ev.nonclk_coeff + click * ev.click_coeff

    def _decayed_counts(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(show, click) of rows brought to the current clock, float32 (decay is lazy)."""
        factor = self.config.eviction.decay ** (self._clock - self._last_seen[rows]).astype(float)
        show = (self._show[rows] * factor).astype(np.float32)
        return show, (self._click[rows] * factor).astype(np.float32)

    def shrink(self) -> int:
        """One eviction pass (unseen, score, max_rows) plus pending expiry; returns rows evicted."""
        ev = self.config.eviction
        with self._lock:
            rows = self.live_rows()
            score = self.scores(rows)
            kill = np.zeros(len(rows), bool)
            if ev.unseen_ticks is not None:
                kill |= self._clock - self._last_seen[rows] >= ev.unseen_ticks
            if ev.min_score is not None:
                kill |= score < ev.min_score
            keep = np.flatnonzero(~kill)
            if ev.max_rows is not None and len(keep) > ev.max_rows:
                r = rows[keep]
                order = np.lexsort((self._keys[r], self._last_seen[r], score[keep]))
                kill[keep[order[: len(keep) - ev.max_rows]]] = True
            self._delete_rows(rows[kill])
            self._expire_pending()
            return int(kill.sum())

    def _delete_rows(self, rows: np.ndarray, record: bool = True) -> None:
        if not len(rows):
            return
        keys = self._keys[rows].copy()
        ix.delete_many(self._index, self._keys, keys)
        self._created[rows] = -1
        self._free = np.concatenate([self._free, rows[::-1]])
        if record:
            self._evicted_keys.append(keys)
            self.totals["evicted"] += len(rows)

    # ------------------------------------------------------------------ snapshot state
    # Columns of a row as snapshots store them; ``state_i`` is the optimizer's i-th array.

    def row_columns(self) -> list[str]:
        return ["key", "emb", *(f"state_{i}" for i in range(len(self._state))),
                "show", "click", "last_seen", "created", "updates"]  # fmt: skip

    def _column(self, name: str) -> np.ndarray:
        if name == "emb":
            return self._emb
        if name.startswith("state_"):
            return self._state[int(name[6:])]
        return self._meta[name]

    def export_rows(self, changed_only: bool = False) -> dict[str, np.ndarray]:
        """Every live row (or those changed since the last snapshot), column by column."""
        with self._lock:
            rows = self.live_rows()
            if changed_only:
                rows = rows[self._changed[rows] != 0]
            return {c: self._column(c)[rows] for c in self.row_columns()}

    def export_pending(self) -> dict[str, np.ndarray]:
        with self._lock:
            e = np.flatnonzero(self._plast >= 0)
            return {c: self._pending[c][e] for c in ("key", "show", "click", "last_seen")}

    def export_scalars(self) -> dict[str, Any]:
        with self._lock:
            return {"clock": self._clock, "train_pulls": self._train_pulls, **self.totals}

    def mark_snapshot(self) -> None:
        """Called once a snapshot is committed: nothing has changed since, nothing evicted."""
        with self._lock:
            self._changed[: self._high] = 0
            self._evicted_keys = []

    def apply_snapshot(
        self,
        rows: dict[str, np.ndarray],
        deleted: np.ndarray,
        pending: dict[str, np.ndarray],
        scalars: dict[str, Any],
    ) -> None:
        """Applies one snapshot on top of this table: delete ``deleted`` keys, upsert
        ``rows``, replace the pending counters and the scalars. A base is applied to an
        empty table; deltas in order after it."""
        with self._lock:
            found = np.empty(len(deleted), np.int64)
            ix.find_many(self._index, self._keys, np.ascontiguousarray(deleted, np.int64), found)
            self._delete_rows(found[found >= 0], record=False)
            keys = np.ascontiguousarray(rows["key"], np.int64)
            where = np.empty(len(keys), np.int64)
            ix.find_many(self._index, self._keys, keys, where)
            new = where < 0
            if new.any():
                where[new] = self._take_rows(int(new.sum()))
                K.insert_rows(self._index, self._keys, keys[new], where[new])
            for c in self.row_columns()[1:]:
                self._column(c)[where] = rows[c]
            self._changed[where] = 0
            self._pcap = 0
            n = len(pending["key"])
            self._alloc_pending(max(n, min(1024, self.config.admission.max_pending)))
            entries = self._pfree[len(self._pfree) - n :][::-1]
            self._pfree = self._pfree[: len(self._pfree) - n]
            K.insert_rows(self._pindex, self._pkeys, pending["key"].astype(np.int64), entries)
            for c in ("show", "click", "last_seen"):
                self._pending[c][entries] = pending[c]
            self._clock = int(scalars["clock"])
            self._train_pulls = int(scalars["train_pulls"])
            self.totals = {k: int(scalars[k]) for k in self.totals}
            self._evicted_keys = []

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return self._high - len(self._free)

    def pending_count(self) -> int:
        return self._pcap - len(self._pfree)

    def evicted_keys(self) -> np.ndarray:
        """Keys evicted since the last snapshot (what a delta must delete)."""
        with self._lock:
            return (
                np.concatenate(self._evicted_keys) if self._evicted_keys else np.empty(0, np.int64)
            )

    def memory_bytes(self) -> dict[str, int]:
        rows = sum(a.nbytes for a in (self._meta, self._emb, *self._state))
        pending = self._pending.nbytes
        return {
            "row_bytes": rows,
            "row_index_bytes": self._index.nbytes + self._free.nbytes,
            "pending_bytes": pending,
            "pending_index_bytes": self._pindex.nbytes + self._pfree.nbytes,
        }

    def bytes_per_row(self) -> float:
        """Bytes of one row slot at full capacity, index share included."""
        per = ROW_META.itemsize + 4 * self._dim + self._opt.state_bytes_per_row(self._dim)
        return per + self._index.itemsize / ix.MAX_LOAD

    def stats(self) -> dict[str, Any]:
        with self._lock:
            mem = self.memory_bytes()
            return {
                "name": self.config.name,
                "rows": len(self),
                "capacity": self._cap,
                "pending": self.pending_count(),
                "clock": self._clock,
                "bytes": sum(mem.values()),
                "bytes_per_row_at_capacity": self.bytes_per_row(),
                "growth_seconds": self.growth["seconds"],
                **mem,
                **self.totals,
            }

    def row_stats(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Statistics of ids at the current clock (decay applied); absent ids read NaN/-1."""
        ids = check_ids(ids)
        with self._lock:
            rows = np.empty(len(ids), np.int64)
            ix.find_many(self._index, self._keys, ids, rows)
            ok = rows >= 0
            r = rows[ok]
            out = {
                "present": ok,
                "show": np.full(len(ids), math.nan, np.float32),
                "click": np.full(len(ids), math.nan, np.float32),
                "last_seen": np.full(len(ids), -1, np.int64),
                "created": np.full(len(ids), -1, np.int64),
                "updates": np.full(len(ids), -1, np.int64),
            }
            out["show"][ok], out["click"][ok] = self._decayed_counts(r)
            out["last_seen"][ok] = self._last_seen[r]
            out["created"][ok] = self._created[r]
            out["updates"][ok] = self._updates[r]
            return out

    def pending_stats(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Pending counters (show, click; -1 where the key is not pending)."""
        ids = check_ids(ids)
        with self._lock:
            e = np.empty(len(ids), np.int64)
            ix.find_many(self._pindex, self._pkeys, ids, e)
            ok = e >= 0
            show = np.full(len(ids), -1, np.int64)
            click = np.full(len(ids), -1, np.int64)
            show[ok] = self._pshow[e[ok]]
            click[ok] = self._pclick[e[ok]]
            return {"pending": ok, "show": show, "click": click}
