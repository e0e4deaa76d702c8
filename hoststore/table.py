"""EmbeddingTable: storage, locking and the kernel calls of one growing int64-keyed table.

The table orchestrates; the rules live elsewhere, as Paddle splits table / accessor / sgd
rule: row slots and the key index in :mod:`hoststore._rows`, the pending-admission
counters in :mod:`hoststore._pending`, who gets a row in :mod:`hoststore.admission`, who
loses it in :mod:`hoststore.eviction`, the update rules in :mod:`hoststore.optimizers`.

One training step: ``pull(ids, train=True, shows=...)`` is a sighting (each id adds its
occurrences to the key's show and may be admitted); ``push(ids, grads, clicks=...,
counts=...)`` applies the optimizer to admitted rows and adds the clicks.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from typing import Any

import numpy as np

from hoststore import _index as ix
from hoststore import _kernels as K
from hoststore import admission, device_pass, eviction
from hoststore._changes import ChangeLog
from hoststore._checks import check_ids, check_per_id, check_push
from hoststore._hashing import ADMIT_SALT, seed_salt
from hoststore._lookup import LookupPool
from hoststore._pending import PendingCounters
from hoststore._rows import RowSlots
from hoststore.config import TableConfig
from hoststore.disk_tier import ColdRows, DiskTier, release_freed_memory
from hoststore.initializers import KIND_CODES, table_salt, write_initial_rows

# Columns a pull ``with_counts`` puts before the embedding: show, click.
COUNT_COLUMNS = 2
_RECENT_PULLS = 4
_NO_HINT = np.empty(0, np.int64)
TOTALS = ("admitted", "evicted", "rejected", "expired_pending", "displaced_pending")
# With a disk tier: RAM is spilled down to this share of its budget (so spills come in
# batches, not at every pull), and cold rows are scanned this many at a time.
_LOW_WATER = 0.9
_SCAN_CHUNK = 1 << 16


class EmbeddingTable:
    """A host-resident embedding table; thread-safe (one lock, kernels release the GIL).

    ``lookup_threads`` > 1 splits large read-only pulls (``train=False``: evaluation,
    serving) over that many threads; lookups are bound by memory latency, so each core
    adds its own misses in flight. Training pulls and pushes stay on the calling thread
    (run shards in parallel with :class:`hoststore.ShardedTable` instead).

    With a ``tier`` (:class:`hoststore.DiskTier`), RAM holds at most the tier's budget of
    rows, the least recently used ones going to disk as whole records and coming back when a
    pull, push or statistics read needs them; shrink, exports and snapshots cover both
    tiers. Results are the same as without the tier, bit for bit.
    """

    def __init__(self, config: TableConfig, *, lookup_threads: int = 1,
                 tier: DiskTier | None = None):  # fmt: skip
        self.config = config
        self._lookup = LookupPool(lookup_threads)
        self._opt = config.optimizer
        self._dim = config.dim
        self._lock = threading.RLock()
        # Held by a snapshot's chunked copy: shrink and loads (which evict and decay rows)
        # wait for it; pulls and pushes only wait for the lock, one chunk at a time.
        self._gate = threading.Lock()
        self._clock = 0
        self._train_pulls = 0
        self._init_salt = table_salt(config.seed)
        self._admit_salt = seed_salt(config.seed, ADMIT_SALT)
        self._init_code = KIND_CODES[config.initializer.kind]
        self._bounds = (float(config.weight_bounds[0]), float(config.weight_bounds[1]))
        ev = config.eviction  # what a show and a click add to a row's delta score
        self._score_coeffs = (np.float32(ev.nonclk_coeff), np.float32(ev.click_coeff))
        self.totals = dict.fromkeys(TOTALS, 0)
        # Change tracking by generation: every write stamps its row with the current
        # generation; a snapshot cuts a generation under the lock, and a delta takes what
        # changed after its parent's cut, so concurrent writes and side exports lose nothing.
        self._gen = 1
        self._log = ChangeLog()
        # Rows found by the last few training pulls: the push of the same ids (the usual
        # next call) starts from them instead of probing the index again.
        self._recent: collections.deque = collections.deque(maxlen=_RECENT_PULLS)
        self._rows = RowSlots(config.dim, self._opt.init(1, config.dim),
                              max(16, config.initial_capacity))  # fmt: skip
        self._pending = PendingCounters(config.admission.max_pending)
        self._cold: ColdRows | None = None
        if tier is not None:
            self._open_tier(tier)

    # ------------------------------------------------------------------ disk tier

    def _open_tier(self, tier: DiskTier) -> None:
        # Recency: the pull/push tick at which each RAM row was last used (4 bytes a row).
        self._touch = np.zeros(self._rows.cap, np.uint32)
        self._ticks = 0
        # Shrink decay rates since the table opened: a cold row records how many it had
        # seen (its epoch) and gets the rest, in order, when it is read back.
        self._decays: list[float] = []
        self.max_ram_rows = tier.rows_for(self._rows.bytes_per_row() + self._touch.itemsize)
        self._low_water = max(1, int(self.max_ram_rows * _LOW_WATER))
        # Keys the spill log may hold (8 bytes each) before a delta falls back to a scan.
        self._spill_log_limit = self.max_ram_rows // 4 + (1 << 16)
        self._cold_cols = self.row_columns()[1:]
        fields = [(c, self._rows.column(c).dtype, self._rows.column(c).shape[1:])
                  for c in self._cold_cols] + [("gen", "<u4"), ("epoch", "<u4")]  # fmt: skip
        self._cold = ColdRows(tier.path, self.config.name, np.dtype(fields), tier.read_threads)
        self._moves = {"faulted_in": 0, "spilled": 0}  # rows moved between the tiers
        self._plan: tuple | None = None  # see _fault_in_plan

    def _mark(self, rows: np.ndarray) -> None:
        """Marks RAM rows used now (the spill takes the least recently used)."""
        self._cover_rows()
        self._touch[rows] = self._ticks

    def _cover_rows(self) -> None:
        """The recency column grows with the row slots."""
        if len(self._touch) < self._rows.cap:
            grown = np.zeros(self._rows.cap, np.uint32)
            grown[: len(self._touch)] = self._touch
            self._touch = grown

    def _catch_up(self, rec: np.ndarray) -> None:
        """Applies the shrink decays a cold record has not seen, in order, one float32
        multiply each, as RAM rows got them: the values equal an all-RAM table's."""
        if not len(rec):
            return
        for j in range(int(rec["epoch"].min()), len(self._decays)):
            behind = rec["epoch"] <= j
            rate = np.float32(self._decays[j])
            rec["show"][behind] *= rate
            rec["click"][behind] *= rate
        rec["epoch"] = len(self._decays)

    def _records(self, rows: np.ndarray) -> np.ndarray:
        rec = np.empty(len(rows), self._cold.dtype)
        for c in self._cold_cols:
            rec[c] = self._rows.column(c)[rows]
        rec["gen"] = self._rows.gen[rows]
        rec["epoch"] = len(self._decays)
        return rec

    def _fault_in(self, ids: np.ndarray) -> int:
        """Brings the cold rows among ``ids`` (keys without a RAM row) back to RAM, with
        their records as they were; returns how many came back. Not a change: the rows
        keep their generation."""
        if self._cold is None or not len(self._cold) or not len(ids):
            return 0
        # (sorted, the lookup reads the runs in order; a key twice is found once)
        _, words = self._cold.take_words(np.sort(ids), ascending=True)
        if not len(words):
            return 0
        keys = words[:, 0].copy()
        r = self._rows
        slots = r.take(len(keys))
        r.insert(keys, slots)
        recs = words.view(np.uint8)
        if K.scatter_records(recs, slots, self._fault_in_plan(), r.cap):
            raise AssertionError(f"row slots beyond the table's {r.cap}")
        if self._decays:  # (records written before any decay have nothing to catch up)
            at = 8 + self._cold.dtype.fields["epoch"][1]
            self._catch_up_rows(slots, recs[:, at : at + 4].copy().view("<u4").reshape(-1))
        self._mark(slots)
        self._moves["faulted_in"] += len(keys)
        return len(keys)

    def _fault_in_plan(self) -> np.ndarray:
        """Where :func:`hoststore._kernels.scatter_records` copies a file record's fields:
        each cold column to its RAM column, the generation too. Rebuilt when the columns
        move (a resize)."""
        version = (self._rows, self._rows.growth["resizes"])
        if self._plan is None or self._plan[0] != version:
            rec = self._cold.dtype
            cols = [(self._rows.column(c), c) for c in self._cold_cols]
            plan = [(a.ctypes.data, a.strides[0], 8 + rec.fields[c][1],
                     a.itemsize * int(np.prod(a.shape[1:])))
                    for a, c in [*cols, (self._rows.gen, "gen")]]  # fmt: skip
            self._plan = (version, np.array(plan, np.int64))
        return self._plan[1]

    def _catch_up_rows(self, rows: np.ndarray, epochs: np.ndarray) -> None:
        """:meth:`_catch_up` for rows back in RAM, whose records had seen ``epochs``."""
        for j in range(int(epochs.min(initial=len(self._decays))), len(self._decays)):
            behind = rows[epochs <= j]
            rate = np.float32(self._decays[j])
            self._rows.show[behind] *= rate
            self._rows.click[behind] *= rate

    def _fault_in_missing(self, ids: np.ndarray) -> None:
        if self._cold is not None and len(self._cold):
            self._fault_in(ids[self._rows.find(ids) < 0])

    def _maybe_spill(self) -> None:
        """Spills RAM down to the budget, unless a snapshot is copying rows (it holds the
        gate: its row slots must stay put; RAM exceeds the budget until it ends); else
        installs a merge of the tier's runs that has finished."""
        if self._cold is None:
            return
        if len(self._rows) <= self.max_ram_rows:
            if self._cold.merge_finished:  # (its runs are replaced: not a change)
                self._cold.compact()
            return
        if self._gate.acquire(blocking=False):
            try:
                self._spill()
            finally:
                self._gate.release()

    def _spill(self) -> None:
        """Moves the least recently used RAM rows to disk until RAM holds the low-water
        share of its budget. Not a change: nothing is logged as evicted, generations stay;
        rows changed since the last cut are listed for the next delta."""
        if self._cold is None or len(self._rows) <= self.max_ram_rows:
            return
        self._cover_rows()
        r = self._rows
        pick = K.least_recent(self._touch, r.created[: r.high], len(r) - self._low_water)
        # A chunk at a time (bounded buffers), each leaving RAM once it is on disk: a write
        # that fails (a full disk) leaves every row in exactly one tier.
        for lo in range(0, len(pick), _SCAN_CHUNK):
            part = pick[lo : lo + _SCAN_CHUNK]
            keys = self._rows.keys[part]  # (a copy: fancy indexing)
            self._cold.put(keys, self._records(part))
            changed = self._rows.gen[part] > self._log.spill_base
            self._log.spilled(keys[changed], self._spill_log_limit)
            self._rows.delete(part)
            self._moves["spilled"] += len(part)
        self._cold.compact()
        release_freed_memory()  # after the merges too: their buffers are the largest

    def _drop_cold(self, keys: np.ndarray) -> np.ndarray:
        """Deletes those of ``keys`` that are on disk; returns them."""
        if self._cold is None or not len(self._cold) or not len(keys):
            return keys[:0]
        found, _ = self._cold.get(keys)
        self._cold.delete(keys[found])
        return keys[found]

    def _cold_get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cold rows of those of ``keys`` on disk: (their keys, caught-up records)."""
        found, rec = self._cold.get(keys)
        self._catch_up(rec)
        return keys[found], rec

    def _cold_scan(self):
        """Every cold row, a chunk at a time: (keys, caught-up records)."""
        if self._cold is None:
            return
        for keys, rec in self._cold.scan(_SCAN_CHUNK):
            self._catch_up(rec)
            yield keys, rec

    def _cold_columns(self, keys: np.ndarray, rec: np.ndarray) -> dict[str, np.ndarray]:
        return {"key": keys, **{c: rec[c] for c in self._cold_cols}}

    def settle(self) -> None:
        """Waits for the disk tier's merges, those in progress and those they lead to (they
        run on a thread of their own while the table serves); without a tier, nothing."""
        if self._cold is not None:
            with self._lock:
                self._cold.settle()

    @property
    def lookup_threads(self) -> int:
        return self._lookup.threads

    @lookup_threads.setter
    def lookup_threads(self, n: int) -> None:
        self._lookup.close()
        self._lookup = LookupPool(n)

    def close(self) -> None:
        """Stops the lookup threads (the table stays usable single-threaded). With a disk
        tier, also drops the cold rows and their directory: the table is then unusable."""
        self.lookup_threads = 1
        if self._cold is not None:
            with self._lock:
                self._cold.close()

    @property
    def growth(self) -> dict[str, Any]:
        return self._rows.growth

    # ------------------------------------------------------------------ pull

    def pull(
        self,
        ids: np.ndarray,
        *,
        train: bool,
        with_counts: bool = False,
        shows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rows for ``ids``, (n, dim) float32 in order; keys without a row read the default.
        ``train=True`` counts ``shows[i]`` occurrences (default 1) of each id and may admit
        it; ``train=False`` counts nothing. ``with_counts`` prepends each key's (show,
        click) as before this pull (Paddle's CVM layout, (n, 2 + dim))."""
        ids = check_ids(ids)
        n = len(ids)
        shows = check_per_id(shows, n, "shows", 1.0)
        out = np.empty((n, COUNT_COLUMNS * with_counts + self._dim), np.float32)
        with self._lock:
            self._pull_locked(ids, shows, out, with_counts, train)
        return out

    def _pull_locked(self, ids, shows, out, with_counts: bool, train: bool) -> np.ndarray:
        """``pull``'s work under the lock, into ``out``; returns each id's row or -1. An
        ``out`` without embedding columns takes the statistics only."""
        emb_out = out[:, COUNT_COLUMNS:] if with_counts else out
        rows = np.empty(len(ids), np.int64)
        if with_counts:
            self._fault_in_missing(ids)
            self._counts(ids, out[:, :COUNT_COLUMNS])
        n_miss = self._pull_existing(ids, shows, emb_out, rows, train)
        if n_miss and self._cold is not None:
            n_miss = self._pull_cold(ids, shows, emb_out, rows, train)
        if train:
            self._train_pulls += 1
            if n_miss:
                miss = np.flatnonzero(rows < 0)
                new_rows = self._admit(ids[miss], shows[miss])
                rows[miss] = new_rows
                got = new_rows >= 0
                width = emb_out.shape[1]  # (0: a pass's statistics read no embeddings)
                emb_out[miss[got]] = self._rows.emb[new_rows[got], :width]
            self._recent.append((ids, rows))
        if self._cold is not None:
            self._ticks += 1
            self._mark(rows[rows >= 0])
            self._maybe_spill()
        return rows

    def _pull_cold(self, ids, shows, out, rows, train: bool) -> int:
        """The pull of ids that missed RAM, again after their cold rows came back (all
        occurrences of a key are in one of the two passes, so each key's statistics see
        its occurrences in order, as without the tier); returns the ids still missing."""
        miss = np.flatnonzero(rows < 0)
        if not self._fault_in(ids[miss]):
            return len(miss)
        sub_out = np.empty((len(miss), out.shape[1]), np.float32)
        sub_rows = np.empty(len(miss), np.int64)
        n_miss = self._pull_existing(ids[miss], shows[miss], sub_out, sub_rows, train)
        out[miss], rows[miss] = sub_out, sub_rows
        return n_miss

    def _counts(self, ids: np.ndarray, out: np.ndarray) -> None:
        """out[:, 0], out[:, 1] = show, click of each id now (row, pending entry or 0)."""
        rows = self._rows.find(ids)
        ok = rows >= 0
        out[:] = 0.0
        out[ok, 0], out[ok, 1] = self._decayed_counts(rows[ok])
        e = self._pending.find(ids)
        pend = e >= 0
        out[pend, 0] = self._pending.show[e[pend]]
        out[pend, 1] = self._pending.click[e[pend]]

    def _pull_existing(self, ids, shows, out, rows, train: bool) -> int:
        r = self._rows

        def run(lo: int, hi: int) -> int:
            return K.pull_existing(
                r.index, r.keys, r.meta, r.emb, np.uint32(self._gen), ids[lo:hi], shows[lo:hi],
                out[lo:hi], rows[lo:hi], self.config.admission.default_value, train,
                self._clock, self.config.eviction.decay, self._score_coeffs[0],
            )  # fmt: skip

        if train:  # training pulls stay on the caller's thread (shards run in parallel)
            return run(0, len(ids))
        return self._lookup.run(run, len(ids))

    def _admit(self, miss_ids: np.ndarray, miss_shows: np.ndarray) -> np.ndarray:
        """Admission for ids without a row; returns each one's new row or -1."""
        adm = self.config.admission
        uniq, inverse, _ = ix.unique_with_inverse(miss_ids)
        shows = np.bincount(inverse, weights=miss_shows, minlength=len(uniq)).astype(np.float32)
        clicks = np.zeros(len(uniq), np.float32)
        draws = None
        if adm.kind == "probability":
            draws = admission.draws(uniq, self._admit_salt, self._train_pulls)
        if adm.uses_counters:
            entries = self._pending.find(uniq)
            known = entries >= 0
            shows[known] += self._pending.show[entries[known]]
            clicks[known] = self._pending.click[entries[known]]
        admit = admission.admit(adm, shows, clicks, draws)
        if adm.uses_counters:
            # Admitted keys leave the pending table; the rest update or join it.
            self._pending.drop(entries[known & admit])
            stay = known & ~admit
            self._pending.set_shows(entries[stay], shows[stay], self._clock)
            new = ~known & ~admit
            for k, n in self._pending.add(uniq[new], shows[new], self._clock,
                                          adm.pending_ttl).items():  # fmt: skip
                self.totals[k] += n
        rows_of_uniq = np.full(len(uniq), -1, np.int64)
        if admit.any():
            rows_of_uniq[admit] = self._create_rows(uniq[admit], shows[admit], clicks[admit])
        return rows_of_uniq[inverse]

    def _create_rows(self, keys: np.ndarray, shows: np.ndarray, clicks: np.ndarray) -> np.ndarray:
        rows = self._rows.create(keys, shows, clicks, self._clock,
                                 self._opt.init(len(keys), self._dim), self._gen,
                                 eviction.scores(self.config.eviction, shows, clicks))  # fmt: skip
        write_initial_rows(self._rows.emb, rows, keys, self._init_code,
                           self.config.initializer.scale, self._init_salt)  # fmt: skip
        self.totals["admitted"] += len(rows)
        return rows

    # ------------------------------------------------------------------ push

    def push(
        self,
        ids: np.ndarray,
        grads: np.ndarray,
        *,
        shows: np.ndarray | None = None,
        clicks: np.ndarray | None = None,
        counts: np.ndarray | None = None,
        assume_unique: bool = False,
    ) -> None:
        """Applies the optimizer to the rows of ``ids`` with ``grads`` (n, dim); duplicate
        ids are summed first. ``clicks`` (and extra ``shows``) join the key's statistics,
        pending keys' too (their gradients are dropped). ``counts``: the occurrences each
        gradient sums (default 1), which show-scaled rules divide by, as Paddle divides by
        the pushed show. ``assume_unique=True`` promises distinct ids (a trainer's deduped
        batch) and skips the dedup pass."""
        self.push_checked(*check_push(self.config, ids, grads, shows, clicks, counts),
                          assume_unique)  # fmt: skip

    def push_checked(
        self,
        ids: np.ndarray,
        grads: np.ndarray,
        shows: np.ndarray,
        clicks: np.ndarray,
        counts: np.ndarray,
        assume_unique: bool = False,
    ) -> None:
        """``push`` for arguments already normalized by :func:`check_push`."""
        r = self._rows
        with self._lock:
            if assume_unique:
                hint = next((rows for i, rows in reversed(self._recent)
                             if i is ids or (len(i) == len(ids) and np.array_equal(i, ids))),
                            _NO_HINT)  # fmt: skip
                rows, missing = self._push_unique_stats(ids, hint, shows, clicks)
                if len(missing):  # (take: ~10x faster than a boolean mask on 2-D grads)
                    found = np.flatnonzero(rows >= 0)
                    grads, rows, counts = grads.take(found, 0), rows.take(found), counts.take(found)
            else:
                rows, grads_u, counts_u, missing = self._gather_push(ids, grads, shows, clicks,
                                                                     counts)  # fmt: skip
                if len(missing) and self._cold is not None and self._fault_in(ids[missing]):
                    m = missing  # the second pass holds every occurrence of its keys
                    more = self._gather_push(ids[m], grads[m], shows[m], clicks[m], counts[m])
                    first = (rows, grads_u, counts_u)
                    rows, grads_u, counts_u = (np.concatenate(ab) for ab in zip(first, more[:3]))
                    missing = m[more[3]]
                grads, counts = grads_u, counts_u
            hp = self._opt.hparams(self._clock)
            r.apply_optimizer(self._opt, rows, grads, counts, hp, self._bounds)
            self._count_pending(ids, shows, clicks, missing, assume_unique)
            self._touched(rows)

    def _push_unique_stats(self, ids, hint, shows, clicks) -> tuple[np.ndarray, np.ndarray]:
        """The statistics part of a push of distinct ids: (each id's row or -1, the
        positions of those without a row)."""
        rows, n_miss = self._touch_push_unique(ids, hint, shows, clicks)
        if n_miss and self._cold is not None:
            miss = np.flatnonzero(rows < 0)
            if self._fault_in(ids[miss]):
                rows[miss], n_miss = self._touch_push_unique(
                    ids[miss], _NO_HINT, shows[miss], clicks[miss])  # fmt: skip
        return rows, (np.flatnonzero(rows < 0) if n_miss else _NO_HINT)

    def _count_pending(self, ids, shows, clicks, missing, distinct: bool) -> None:
        """Shows and clicks pushed for keys without a row join their pending counters."""
        if len(missing) and self.config.admission.uses_counters:
            self._pending.count(ids[missing], shows[missing], clicks[missing], self._clock,
                                distinct)  # fmt: skip

    def _touched(self, rows: np.ndarray) -> None:
        """With a disk tier: ``rows`` were just used; RAM spills down to its budget."""
        if self._cold is not None:
            self._ticks += 1
            self._mark(rows)
            self._maybe_spill()

    # ------------------------------------------------------------------ a pass on a device

    def begin_pass(self, batches, *, with_counts: bool = False) -> device_pass.PassRows:
        """A pass of training batches that a device trains: ``batches`` are (distinct ids,
        occurrences, clicks) each, in training order. Each batch's training pull and its
        push's statistics are applied in that order, as a synchronous per-batch loop would,
        without the optimizer; the pass's rows come back with their weights and optimizer
        state (see :mod:`hoststore.device_pass`). Nothing else may write these rows until
        :meth:`end_pass` writes them back."""
        return self.begin_pass_checked(device_pass.check_batches(batches), with_counts)

    def begin_pass_checked(self, batches, with_counts: bool) -> device_pass.PassRows:
        """``begin_pass`` for batches already normalized by ``check_batches``."""
        found, counts = [], []
        with self._lock:
            for ids, occ, clicks in batches:
                n = len(ids)
                out = np.empty((n, COUNT_COLUMNS * with_counts), np.float32)  # no embeddings
                rows = self._pull_locked(ids, occ, out, with_counts, train=True)
                found.append(rows >= 0)
                counts.append(out if with_counts else np.empty((0, COUNT_COLUMNS), np.float32))
                no_shows = np.zeros(n, np.float32)
                rows, missing = self._push_unique_stats(ids, rows, no_shows, clicks)
                self._count_pending(ids, no_shows, clicks, missing, distinct=True)
                self._touched(rows[rows >= 0])
            every = np.concatenate([b[0] for b in batches] or [np.empty(0, np.int64)])
            keys, inverse, _ = ix.unique_with_inverse(every)
            self._fault_in_missing(keys)
            rows = self._rows.find(keys)
            present = rows >= 0
            r = rows[present]
            weights = self._rows.emb[r]
            state = tuple(s[r] for s in self._rows.state)
        lent = np.where(present, np.cumsum(present) - 1, -1).astype(np.int32)
        ends = np.cumsum([len(b[0]) for b in batches], dtype=np.int64)
        slots = np.split(lent[inverse], ends[:-1]) if batches else []
        return device_pass.PassRows(
            found, counts, slots, keys, present, weights, state, self._clock
        )

    def end_pass(self, keys: np.ndarray, weights: np.ndarray, state) -> None:
        """Writes the weights and optimizer state a device trained for ``keys`` (rows that
        :meth:`begin_pass` returned); they count as changed for the next delta."""
        self.end_pass_checked(*device_pass.check_written(self.config, keys, weights, state))

    def end_pass_checked(self, keys: np.ndarray, weights: np.ndarray, state) -> None:
        """``end_pass`` for arguments already normalized by ``check_written``."""
        with self._lock:
            self._fault_in_missing(keys)
            rows = self._rows.find(keys)
            if (rows < 0).any():
                raise ValueError(f"{int((rows < 0).sum())} keys of the pass have no row in "
                                 f"table {self.config.name!r}")  # fmt: skip
            self._rows.emb[rows] = weights
            for arr, new in zip(self._rows.state, state, strict=True):
                arr[rows] = new
            self._rows.gen[rows] = self._gen
            self._touched(rows)

    def _touch_push_unique(self, ids, hint, shows, clicks) -> tuple[np.ndarray, int]:
        r = self._rows
        return K.touch_push_unique(
            r.index, r.keys, r.meta, ids, hint, shows, clicks, self._clock,
            self.config.eviction.decay, np.uint32(self._gen), *self._score_coeffs,
        )  # fmt: skip

    def _gather_push(self, ids, grads, shows, clicks, counts):
        r = self._rows
        return K.gather_push(
            r.index, r.keys, r.meta, ids, grads, shows, clicks, counts, self._clock,
            self.config.eviction.decay, np.uint32(self._gen), *self._score_coeffs,
        )  # fmt: skip

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
        return self._rows.live()

    def scores(self, rows: np.ndarray) -> np.ndarray:
        """Decayed show/click score of rows at the current clock (float64)."""
        return eviction.scores(self.config.eviction, *self._decayed_counts(rows))

    def _decayed_counts(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(show, click) of rows brought to the current clock, float32 (decay is lazy)."""
        r = self._rows
        return self._counts_now(r.show[rows], r.click[rows], r.last_seen[rows])

    def _counts_now(self, show, click, last_seen, clock: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Counts stored as of each row's last sighting (RAM rows or cold records),
        brought to ``clock`` (default: the current clock)."""
        unseen = (self._clock if clock is None else clock) - last_seen
        ev = self.config.eviction
        return eviction.decayed(ev, show, unseen), eviction.decayed(ev, click, unseen)

    def _cold_counts(self, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_decayed_counts`` of cold records (caught up)."""
        return self._counts_now(rec["show"], rec["click"], rec["last_seen"])

    def _cold_score(self, rec: np.ndarray) -> np.ndarray:
        return eviction.scores(self.config.eviction, *self._cold_counts(rec))

    def shrink(self) -> int:
        """One eviction pass (shrink decay, then unseen, score, max_rows) plus pending
        expiry; returns rows evicted."""
        ev = self.config.eviction
        with self._gate, self._lock:
            rate = ev.shrink_decay
            if rate != 1.0:  # every row: not marked changed, a delta carries the rate instead
                self._decay_all(rate)
                self._log.decays.append((self._gen, rate))
            rows = self.live_rows()
            unseen, score = self._clock - self._rows.last_seen[rows], self.scores(rows)
            keys = self._rows.keys[rows]
            if self._cold is None or not len(self._cold) or ev.max_rows is None:
                kill = eviction.victims(ev, unseen, score, keys)  # per-row rules: per tier
                self._delete_rows(rows[kill])
                n = int(kill.sum())
                for ck, rec in self._cold_scan():
                    dead = ck[eviction.victims(ev, self._clock - rec["last_seen"],
                                               self._cold_score(rec), ck)]  # fmt: skip
                    self._evict_cold(dead)
                    n += len(dead)
            else:  # max_rows ranks the rows of both tiers together
                cold = [(ck, self._clock - rec["last_seen"], self._cold_score(rec))
                        for ck, rec in self._cold_scan()]  # fmt: skip
                ram = (keys, unseen, score)
                all_keys, all_unseen, all_score = (
                    np.concatenate([a, *(c[i] for c in cold)]) for i, a in enumerate(ram)
                )
                kill = eviction.victims(ev, all_unseen, all_score, all_keys)
                self._delete_rows(rows[kill[: len(rows)]])
                self._evict_cold(all_keys[len(rows) :][kill[len(rows) :]])
                n = int(kill.sum())
            ttl = self.config.admission.pending_ttl
            self.totals["expired_pending"] += self._pending.expire(self._clock, ttl)
            return n

    def _decay_all(self, rate: float) -> None:
        """A shrink decay: RAM rows now, cold rows when they are next read."""
        self._decay_rows(self.live_rows(), rate)
        if self._cold is not None:
            self._decays.append(rate)

    def _decay_rows(self, rows: np.ndarray, rate: float) -> None:
        self._rows.show[rows] *= np.float32(rate)
        self._rows.click[rows] *= np.float32(rate)

    def _evict_cold(self, keys: np.ndarray) -> None:
        if len(keys):
            self._cold.delete(keys)
            self._log.evicted.append((self._gen, keys))
            self.totals["evicted"] += len(keys)

    def _delete_rows(self, rows: np.ndarray, record: bool = True) -> None:
        if not len(rows):
            return
        keys = self._rows.delete(rows)
        if record:
            self._log.evicted.append((self._gen, keys))
            self.totals["evicted"] += len(rows)

    # ------------------------------------------------------------------ snapshot state

    @property
    def state_names(self) -> tuple[str, ...]:
        return self._rows.state_names

    def row_layout(self) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
        """Each snapshot row column's dtype and per-row shape."""
        return self._rows.layout()

    def row_columns(self) -> list[str]:
        """Columns of a row as snapshots store them (state columns by the optimizer's
        state field names)."""
        return self._rows.columns()

    def export_rows(self, since: int | None = None) -> dict[str, np.ndarray]:
        """Every live row (or those changed after generation ``since``), column by column."""
        with self._lock:
            ram = self._rows.copy_out(self._changed_rows(since))
            return _concat_columns([ram, *self._cold_changed(since, None)])

    def _changed_rows(self, since: int | None) -> np.ndarray:
        """Live rows changed after generation ``since`` (all of them for None)."""
        rows = self.live_rows()
        return rows if since is None else rows[self._rows.gen[rows] > since]

    def export_serving(
        self,
        min_score: float | None = None,
        max_unseen: int | None = None,
        delta_threshold: float | None = None,
    ) -> dict[str, np.ndarray]:
        """:meth:`serving_rows`, gathered."""
        with self.serving_rows(min_score, max_unseen, delta_threshold) as chunks:
            return _concat_columns(list(chunks))

    def serving_rows(
        self,
        min_score: float | None = None,
        max_unseen: int | None = None,
        delta_threshold: float | None = None,
    ) -> RowChunks:
        """Keys and weights of the rows a serving export keeps, as Paddle's xbox save does:
        score >= ``min_score`` (``base_threshold``), unseen for at most ``max_unseen`` ticks
        (``delta_keep_days``) and delta score >= ``delta_threshold`` (``delta_threshold``).
        With a delta threshold the emitted rows' delta scores restart at 0 (Paddle's
        ``UpdateStatAfterSave``): the next serving delta holds the rows pushed to since.
        Column chunks (the RAM rows, then the cold rows a scan chunk at a time: a table
        bigger than RAM is never gathered): read them all or close them. They hold the lock
        from the first chunk to the last, except a tiered table's plain export (no delta
        threshold: it changes nothing), which reads the disk tier as a snapshot does,
        without the lock: the rows as of its first chunk (spills, shrinks and loads wait
        until it is read)."""
        r = self._rows

        def keep(show, click, last_seen, delta_score, clock) -> np.ndarray:
            ok = np.ones(len(show), bool)
            if min_score is not None:
                counts = self._counts_now(show, click, last_seen, clock)
                ok &= eviction.scores(self.config.eviction, *counts) >= min_score
            if max_unseen is not None:
                ok &= clock - last_seen <= max_unseen
            if delta_threshold is not None:
                ok &= delta_score >= delta_threshold
            return ok

        def ram_chunk(clock) -> dict[str, np.ndarray]:
            rows = self.live_rows()
            rows = rows[keep(r.show[rows], r.click[rows], r.last_seen[rows],
                             r.delta_score[rows], clock)]  # fmt: skip
            if delta_threshold is not None:
                r.delta_score[rows] = 0.0
                r.gen[rows] = self._gen  # a change: the checkpoint chain's next delta has it
            return {"key": r.keys[rows], "emb": r.emb[rows]}

        def cold_chunk(keys, rec, clock) -> dict[str, np.ndarray]:
            ok = keep(rec["show"], rec["click"], rec["last_seen"], rec["delta_score"], clock)
            keys, rec = keys[ok], rec[ok]
            if delta_threshold is not None and len(keys):
                rec["delta_score"], rec["gen"] = 0.0, self._gen
                self._cold.put(keys, rec, new=False)
                self._log.spilled(keys, self._spill_log_limit)
            return {"key": keys, "emb": rec["emb"]}

        def frozen_chunks():
            self._gate.acquire()  # (as a snapshot's cut: nothing leaves RAM or disk meanwhile)
            try:
                with self._lock:
                    clock = self._clock
                    first = ram_chunk(clock)
                    self._cold.freeze()
                yield first
                for keys, rec in self._cold_scan():
                    yield cold_chunk(keys, rec, clock)
            finally:
                self._end_cut()

        def chunks():
            with self._lock:
                yield ram_chunk(self._clock)
                for keys, rec in self._cold_scan():
                    yield cold_chunk(keys, rec, self._clock)

        plain_tiered = self._cold is not None and delta_threshold is None
        gen = frozen_chunks() if plain_tiered else chunks()
        return RowChunks(None, gen, gen.close)

    def _shows_now(self, with_weights: bool):
        """Every live row's key, show brought to the clock and (``with_weights``) weights:
        the RAM rows, then the cold rows a scan chunk at a time. The caller holds the lock."""
        r = self._rows
        rows = self.live_rows()
        ram = {"key": r.keys[rows], "show_now": self._decayed_counts(rows)[0]}
        yield {**ram, "emb": r.emb[rows]} if with_weights else ram
        for k, rec in self._cold_scan():
            cold = {"key": k, "show_now": self._cold_counts(rec)[0]}
            yield {**cold, "emb": rec["emb"]} if with_weights else cold

    def export_pending(self) -> dict[str, np.ndarray]:
        with self._lock:
            return self._pending.export()

    def export_scalars(self) -> dict[str, Any]:
        with self._lock:
            return {"clock": self._clock, "train_pulls": self._train_pulls, **self.totals}

    def snapshot_stream(self, since: int | None = None) -> dict[str, Any]:
        """A snapshot's cut: rows changed after generation ``since`` (all for None) as
        :class:`RowChunks` (their count, then column chunks: the table is never gathered
        whole), keys evicted and shrink decays since, pending counters, scalars with
        ``generation`` (the next delta's ``since``) and ``held`` (``seconds``: the longest
        writes waited, final once the chunks are read). The cut is one instant under the
        lock; rows are then copied a chunk per hold of the lock, with no eviction, decay or
        spill meanwhile (they wait at the gate until the chunks are read or closed); a row
        written after the cut may be copied newer, and the next delta carries it too:
        chains stay exact. The disk tier stays as it was at the cut until the chunks are
        read (rows faulted in meanwhile leave the disk when it thaws)."""
        self._gate.acquire()
        try:
            t0 = time.perf_counter()
            with self._lock:
                self._log.check(since, self.config.name)
                cut = self._gen
                self._gen += 1
                deleted, decays = self._log.after(since)
                rows = self._changed_rows(since)
                out = {
                    "pending": self._pending.export(),
                    "deleted": deleted,
                    "scalars": {"clock": self._clock, "train_pulls": self._train_pulls,
                                "generation": cut, **self.totals, "shrink_decays": decays},
                }  # fmt: skip
                n_cold, release, keys = 0, self._gate.release, None
                if self._cold is not None:  # the disk tier stays as at the cut until read
                    self._cold.freeze()
                    release = self._end_cut
                    # a base has every cold row; a delta's count is known once they are read
                    n_cold = len(self._cold) if since is None else None
                    keys = self._log.spilled_after(since)
                    self._log.cut_spills(cut)
                self._log.trim(cut)
            out["held"] = {"seconds": time.perf_counter() - t0}
        except BaseException:
            self._end_cut()
            raise

        def chunks():
            yield from self._rows.iter_out(rows, self._lock, out["held"])
            if self._cold is not None:
                yield from self._cold_changed(since, keys)

        count = None if n_cold is None else len(rows) + n_cold
        out["rows"] = RowChunks(count, chunks(), release)
        return out

    def _end_cut(self) -> None:
        """A snapshot's rows are read: the disk tier thaws, the gate opens."""
        if self._cold is not None:
            with self._lock:
                self._cold.thaw()
        self._gate.release()

    def _cold_changed(self, since: int | None, keys: np.ndarray | None):
        """The cold rows changed after ``since`` (all for None): those of ``keys`` (the
        spill log's) or a scan. A snapshot reads them without the lock: the disk tier is
        frozen as at its cut (spills, shrinks and loads wait at the gate; rows that move to
        RAM stay on disk until the cut is read), and so are the shrink decays."""
        after = -1 if since is None else since
        if keys is not None:
            chunks = (self._cold_get(keys[lo : lo + _SCAN_CHUNK])
                      for lo in range(0, len(keys), _SCAN_CHUNK))  # fmt: skip
        else:
            chunks = self._cold_scan()
        for k, rec in chunks:
            new = rec["gen"] > after
            yield self._cold_columns(k, rec) if new.all() else self._cold_columns(k[new], rec[new])

    def apply_snapshot(
        self,
        rows: dict[str, np.ndarray],
        deleted: np.ndarray,
        pending: dict[str, np.ndarray],
        scalars: dict[str, Any],
        changed: bool = False,
    ) -> None:
        """Applies a base (to an empty table) or a delta: its shrink decays to every row,
        then deletes, upserts (final values) and the pending counters and scalars. The
        table continues the snapshot's generations, the rows unchanged since its cut
        (``changed=True``: changed, for rows from other shards' chains)."""
        r = self._rows
        with self._gate, self._lock:
            cut = int(scalars.get("generation", 0))
            self._gen = max(self._gen, cut + 1)
            self._log.restart(cut)
            for rate in scalars.get("shrink_decays", ()):
                self._decay_all(rate)
            # Snapshots list each deleted key once; a list that repeats one must still free
            # its slot once (twice, the slot would go to two new keys).
            deleted = np.unique(np.asarray(deleted, np.int64))
            found = r.find(deleted)
            self._delete_rows(found[found >= 0], record=False)
            self._drop_cold(deleted[found < 0])
            keys = np.ascontiguousarray(rows["key"], np.int64)
            # With a disk tier, a chunk at a time, spilled after each: RAM stays near budget.
            step = len(keys) if self._cold is None else max(4096, self.max_ram_rows // 2)
            for lo in range(0, len(keys), max(step, 1)):
                part = keys[lo : lo + step]
                self._fault_in_missing(part)
                where = r.find(part)
                new = where < 0
                if new.any():
                    where[new] = r.take(int(new.sum()))
                    r.insert(part[new], where[new])
                for c in self.row_columns()[1:]:
                    r.column(c)[where] = rows[c][lo : lo + step]
                r.gen[where] = self._gen if changed else cut
                if self._cold is not None:
                    self._mark(where)
                    self._spill()
            self._pending.replace(pending)
            self._clock = int(scalars["clock"])
            self._train_pulls = int(scalars["train_pulls"])
            self.totals = {k: int(scalars.get(k, 0)) for k in self.totals}

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return len(self._rows) + (len(self._cold) if self._cold is not None else 0)

    def pending_count(self) -> int:
        return len(self._pending)

    def evicted_keys(self) -> np.ndarray:
        """Keys evicted that the eviction log still holds, each once."""
        with self._lock:
            return self._log.after(None)[0]

    def memory_bytes(self) -> dict[str, int]:
        (rows, row_index), (pending, pending_index) = (self._rows.memory_bytes(),
                                                       self._pending.memory_bytes())  # fmt: skip
        if self._cold is not None:
            rows += self._touch.nbytes
        return {"row_bytes": rows, "row_index_bytes": row_index, "pending_bytes": pending,
                "pending_index_bytes": pending_index}  # fmt: skip

    def stats(self) -> dict[str, Any]:
        with self._lock:
            mem = self.memory_bytes()
            return {
                "name": self.config.name,
                "rows": len(self),
                "capacity": self._rows.cap,
                "pending": self.pending_count(),
                "clock": self._clock,
                "bytes": sum(mem.values()),
                "bytes_per_row_at_capacity": self._rows.bytes_per_row(),
                "growth_seconds": self.growth["seconds"],
                **mem,
                **self.totals,
                **self._tier_stats(),
            }

    def _tier_stats(self) -> dict[str, Any]:
        if self._cold is None:
            return {}
        return {"ram_rows": len(self._rows), "disk_rows": len(self._cold),
                "max_ram_rows": self.max_ram_rows,
                "disk_bytes": self._cold.disk_bytes(),
                "key_filter_bytes": self._cold.ram_bytes(), **self._moves,
                "merge_failures": self._cold.merge_failures,
                "merge_error": self._cold.merge_error}  # fmt: skip

    def row_stats(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Statistics of ids at the current clock (decay applied); absent ids read NaN/-1."""
        ids = check_ids(ids)
        with self._lock:
            self._fault_in_missing(ids)
            rows = self._rows.find(ids)
            return self._rows.stats(rows, *self._decayed_counts(rows[rows >= 0]))

    def pending_stats(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Pending counters (show, click; -1 where the key is not pending)."""
        ids = check_ids(ids)
        with self._lock:
            return self._pending.stats(ids)


def top_rows(tables: list[EmbeddingTable], fraction: float) -> dict[str, np.ndarray]:
    """Keys and weights of the ``fraction`` of the rows of ``tables`` (the shards of one
    table) with the most shows brought to the clock, ties to the smaller key, in the
    tables' row order: Paddle's ``save_cache_model``. Every table's lock is held for both
    scans (one instant for every shard): the first ranks the shows alone (4 bytes a row),
    the second keeps the rows above the cut and the smallest keys at it. A tiered table's
    weights are never gathered whole."""
    with contextlib.ExitStack() as held:
        for t in tables:
            held.enter_context(t._lock)
        shows = [c["show_now"] for t in tables for c in t._shows_now(with_weights=False)]
        shows = np.concatenate(shows) if shows else np.zeros(0, np.float32)
        n = len(shows)
        k = int(round(fraction * n))
        dim = tables[0].config.dim
        if not k:
            return {"key": np.zeros(0, np.int64), "emb": np.zeros((0, dim), np.float32)}
        cut = np.partition(shows, n - k)[n - k]  # the k-th most shows
        ties = k - int((shows > cut).sum())  # rows at the cut that go: the smallest keys
        del shows
        parts, tied, at = [], None, 0
        for t in tables:
            for c in t._shows_now(with_weights=True):
                c["pos"] = np.arange(at, at + len(c["key"]))
                at += len(c["key"])
                parts.append({f: v[c["show_now"] > cut] for f, v in c.items()})
                eq = c["show_now"] == cut
                if ties and eq.any():
                    at_cut = {f: v[eq] for f, v in c.items()}
                    tied = at_cut if tied is None else _concat_columns([tied, at_cut])
                    if len(tied["key"]) > ties:  # (bounded: the smallest keys so far)
                        keep = np.argpartition(tied["key"], ties - 1)[:ties]
                        tied = {f: v[keep] for f, v in tied.items()}
        rows = _concat_columns(parts + ([tied] if tied is not None else []))
        order = np.argsort(rows["pos"], kind="stable")
        return {"key": rows["key"][order], "emb": rows["emb"][order]}


class RowChunks:
    """The rows of a snapshot cut: ``count`` rows (None: known once read), iterated as
    column chunks; a context
    manager whose exit (or :meth:`close`) releases what the cut holds (read it or close it:
    shrinks, loads and spills wait until then)."""

    def __init__(self, count: int, chunks, release):
        self.count = count
        self._chunks, self._release = chunks, release

    def __iter__(self):
        return self._chunks

    def close(self) -> None:
        if self._release is not None:
            self._chunks.close()
            self._release, release = None, self._release
            release()

    def __enter__(self) -> RowChunks:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _concat_columns(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Columns of several row sets, one after the other."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
