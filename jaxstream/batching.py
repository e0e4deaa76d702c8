"""From parsed examples to one padded, deduplicated host batch.

Shapes are padded to a few buckets so the jitted step compiles once per bucket: the batch
to ``batch_size`` (padding rows weigh 0) and each table's unique IDs to a power of two.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import hoststore as hs
from jaxstream.data.examples import Examples
from jaxstream.features import FeatureSpec, slot_salt
from jaxstream.step import DeviceBatch

MIN_BUCKET = 256


def bucket(n: int) -> int:
    return max(MIN_BUCKET, 1 << max(0, int(n - 1).bit_length()))


@dataclasses.dataclass
class HostBatch:
    size: int  # real examples; the rest is padding
    labels: np.ndarray  # [B] float32
    weights: np.ndarray  # [B] float32, 0 on padding
    dense: np.ndarray  # [B, D] float32
    unique_ids: dict[str, np.ndarray]  # table -> [U] int64 store keys
    shows: dict[str, np.ndarray]  # table -> [U] float32 occurrences of each unique ID
    clicks: dict[str, np.ndarray]  # table -> [U] float32 occurrences in clicked examples
    # Each table's slots stacked ([S, B, L_max]): they go to the device as two arrays per
    # table (a transfer per slot cost a quarter of the host's work per batch).
    table_index: dict[str, np.ndarray]  # int32 rows into the table's unique rows
    table_mask: dict[str, np.ndarray]  # float32, 1 where an ID was kept
    places: dict[str, tuple[str, int, int]]  # slot -> (table, position, max_len)

    @property
    def index(self) -> dict[str, np.ndarray]:
        """slot -> [B, L] int32 rows into its table's unique rows (views; made on demand,
        as nothing on the training path needs them per slot)."""
        return {s: self.table_index[t][j, :, :n] for s, (t, j, n) in self.places.items()}

    @property
    def mask(self) -> dict[str, np.ndarray]:
        """slot -> [B, L] float32 (views, as :attr:`index`)."""
        return {s: self.table_mask[t][j, :, :n] for s, (t, j, n) in self.places.items()}

    def padded_rows(self, table: str) -> int:
        return bucket(len(self.unique_ids[table]))

    @property
    def nbytes(self) -> int:
        arrays = [self.labels, self.weights, self.dense]
        for d in (self.unique_ids, self.shows, self.clicks, self.table_index, self.table_mask):
            arrays += d.values()
        return sum(a.nbytes for a in arrays)

    def device_batch(self, rows: dict[str, np.ndarray]) -> DeviceBatch:
        """The :class:`jaxstream.step.DeviceBatch` of this batch with the store ``rows``."""
        return DeviceBatch(rows, self.table_index, self.table_mask, self.dense, self.labels,
                           self.weights)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _PackedTable:
    """One table's slots of a block of examples as the dedup kernel reads them: all slots'
    IDs in one array, their CSR offsets stacked. Made once per block, so a batch costs
    views and one kernel call per table, not numpy calls per slot (each of which waits for
    the GIL while the pipeline's other stages hold it)."""

    ids: np.ndarray  # int64, slot after slot
    bases: np.ndarray  # [S] where each slot's IDs start in ``ids``
    offsets: np.ndarray  # [S, N + 1] each slot's offsets (not rebased to a batch)
    max_lens: np.ndarray  # [S]
    salts: np.ndarray  # [S] uint64


@dataclasses.dataclass(frozen=True)
class _Packed:
    tables: dict[str, _PackedTable]
    places: dict[str, tuple[str, int, int]]


def _pack(ex: Examples, spec: FeatureSpec) -> _Packed:
    tables, places = {}, {}
    for table in spec.tables:
        slots = spec.slots_of(table.name)
        ids = [ex.slot_ids[s.name] for s in slots]
        tables[table.name] = _PackedTable(
            np.concatenate(ids).astype(np.int64, copy=False),
            np.cumsum([0] + [len(x) for x in ids[:-1]]).astype(np.int64),
            np.stack([ex.slot_offsets[s.name] for s in slots]).astype(np.int64, copy=False),
            np.array([s.max_len for s in slots], np.int64),
            np.array([slot_salt(s.name) for s in slots], np.uint64),
        )  # fmt: skip
        places.update((s.name, (table.name, j, s.max_len)) for j, s in enumerate(slots))
    return _Packed(tables, places)


def _batch_of(ex: Examples, packed: _Packed, lo: int, hi: int, batch_size: int) -> HostBatch:
    """The batch of examples [lo, hi) of ``ex``, padded to ``batch_size``."""
    n = hi - lo
    if n > batch_size:
        raise ValueError(f"{n} examples do not fit a batch of {batch_size}")
    labels = np.zeros(batch_size, np.float32)
    labels[:n] = ex.labels[lo:hi]
    weights = np.zeros(batch_size, np.float32)
    weights[:n] = 1.0
    dense = np.zeros((batch_size, ex.dense.shape[1]), np.float32)
    dense[:n] = ex.dense[lo:hi]
    unique_ids, shows, clicks, t_index, t_mask = {}, {}, {}, {}, {}
    for name, p in packed.tables.items():
        d = hs.dedup_slots(p.ids, p.bases, p.offsets, p.max_lens, p.salts, labels, batch_size,
                           first=lo, count=n)  # fmt: skip
        unique_ids[name], shows[name], clicks[name] = d.unique, d.counts, d.clicks
        t_index[name], t_mask[name] = d.index, d.mask
    return HostBatch(n, labels, weights, dense, unique_ids, shows, clicks, t_index, t_mask,
                     packed.places)  # fmt: skip


def make_batch(ex: Examples, spec: FeatureSpec, batch_size: int) -> HostBatch:
    """All of ``ex`` as one batch, padded to ``batch_size``."""
    return _batch_of(ex, _pack(ex, spec), 0, len(ex), batch_size)


def batch_threads(n: int, training: bool = True) -> int:
    """``n``, or for 0 one per core this process may use, one less for ``training`` (the
    pull, the push and the step need the rest), at least 1, at most 4. Measured on 2
    cores: for training one thread ran 299K examples/s against 291K with two (six
    alternating pairs, LR model, medians), with the null step 495K against 453K (three
    pairs); a partition's evaluation, which builds the batches training then reuses and
    runs no push, ran evaluation and training together at 184-196K examples/s with two
    against 177-181K with one (three pairs, LR)."""
    return n or max(1, min(4, len(os.sched_getaffinity(0)) - training))


def batches(ex: Examples, spec: FeatureSpec, batch_size: int, min_batches: int = 0,
            threads: int = 1, first: int = 0):  # fmt: skip
    """Consecutive batches of ``ex`` (the last one padded), then empty ones up to
    ``min_batches`` (workers in lockstep run the same number of steps), from batch
    ``first`` on. ``threads`` > 1 builds that many batches at once (the dedup kernel
    releases the GIL), a few ahead, still yielded in order."""
    bounds = [(lo, min(len(ex), lo + batch_size)) for lo in range(0, len(ex), batch_size)]
    bounds += [(0, 0)] * max(0, min_batches - len(bounds))
    bounds = bounds[first:]

    packed = _pack(ex, spec)

    def build(b: tuple[int, int]) -> HostBatch:
        return _batch_of(ex, packed, *b, batch_size)

    if threads <= 1:
        yield from map(build, bounds)
        return
    with ThreadPoolExecutor(threads, thread_name_prefix="batcher") as pool:
        todo = iter(bounds)
        ahead = collections.deque(
            pool.submit(build, b) for b in itertools.islice(todo, 2 * threads)
        )
        while ahead:
            hb = ahead.popleft().result()
            more = next(todo, None)
            if more is not None:
                ahead.append(pool.submit(build, more))
            yield hb


class TwoPasses:
    """A partition's batches for its evaluation pass and then its training pass (the same
    examples, the same batches): the batches :meth:`first` builds are kept up to
    ``keep_bytes`` and :meth:`again` hands them out again, building only those past the
    budget. Building the batches (the dedup) twice was 20-40% of the host's work per
    partition (the DNN and LR streams of BENCHMARKS.md), half of it repeated."""

    def __init__(self, make, keep_bytes: int):
        """``make(first, training)``: the batches from batch ``first`` on (see
        :func:`batches`), for the training pass or the evaluation pass."""
        self._make, self._keep_bytes = make, keep_bytes
        self._kept: collections.deque[HostBatch] = collections.deque()
        self._all_kept = False

    def first(self):
        used, keeping = 0, self._keep_bytes > 0
        for hb in self._make(0, False):
            if keeping:
                used += hb.nbytes
                keeping = used <= self._keep_bytes
                if keeping:
                    self._kept.append(hb)
            yield hb
        self._all_kept = keeping

    def again(self):
        n = len(self._kept)
        while self._kept:  # (each handed out once more, then let go)
            yield self._kept.popleft()
        if not self._all_kept:
            yield from self._make(n, True)
