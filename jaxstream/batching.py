"""From parsed examples to one padded, deduplicated host batch.

Shapes are padded to a few buckets so the jitted step compiles once per bucket: the batch
to ``batch_size`` (padding rows weigh 0) and each table's unique IDs to a power of two.
"""

from __future__ import annotations

import dataclasses

import numba as nb
import numpy as np

from hoststore import index as ix
from hoststore.hashing import mix64
from jaxstream.data.examples import Examples
from jaxstream.features import FeatureSpec, slot_salt

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
    clicks: dict[str, np.ndarray]  # table -> [U] float32 clicks of each unique ID
    index: dict[str, np.ndarray]  # slot -> [B, L] int32 rows into the table's unique rows
    mask: dict[str, np.ndarray]  # slot -> [B, L] float32

    def padded_rows(self, table: str) -> int:
        return bucket(len(self.unique_ids[table]))


@nb.njit(nogil=True, cache=True)
def _dedup_table(all_ids, bases, offsets, max_lens, salts, labels, batch, width):
    """One table's slots -> (unique salted keys, index [S, batch, width], mask, clicks).

    Slot s of example i holds all_ids[bases[s] + offsets[s, i] : ... + offsets[s, i + 1]]
    (at most max_lens[s] kept). Unique keys come out in first-seen order.
    """
    n_slots = offsets.shape[0]
    n = offsets.shape[1] - 1
    total = 0
    for s in range(n_slots):
        for i in range(n):
            total += min(offsets[s, i + 1] - offsets[s, i], max_lens[s])
    scratch = np.full(int(total / ix.MAX_LOAD) + 9, -1, np.int32)
    uniq = np.empty(total, np.int64)
    clicks = np.zeros(total, np.float32)
    index = np.zeros((n_slots, batch, width), np.int32)
    mask = np.zeros((n_slots, batch, width), np.float32)
    u = 0
    for s in range(n_slots):
        for i in range(n):
            a = bases[s] + offsets[s, i]
            m = min(offsets[s, i + 1] - offsets[s, i], max_lens[s])
            for j in range(m):
                k = np.int64(mix64(np.uint64(all_ids[a + j]) ^ salts[s]))
                e, u = ix.find_or_append(scratch, uniq, k, u)
                index[s, i, j] = e
                mask[s, i, j] = 1.0
                clicks[e] += labels[i]
    return uniq[:u], index, mask, clicks[:u]


def make_batch(ex: Examples, spec: FeatureSpec, batch_size: int) -> HostBatch:
    n = len(ex)
    if n > batch_size:
        raise ValueError(f"{n} examples do not fit a batch of {batch_size}")
    labels = np.zeros(batch_size, np.float32)
    labels[:n] = ex.labels
    weights = np.zeros(batch_size, np.float32)
    weights[:n] = 1.0
    dense = np.zeros((batch_size, spec.num_dense), np.float32)
    dense[:n] = ex.dense
    index, mask, unique_ids, clicks = {}, {}, {}, {}
    for table in spec.tables:
        slots = spec.slots_of(table.name)
        ids = [ex.slot_ids[s.name] for s in slots]
        bases = np.cumsum([0] + [len(x) for x in ids[:-1]]).astype(np.int64)
        offsets = np.stack([ex.slot_offsets[s.name] for s in slots]).astype(np.int64)
        max_lens = np.array([s.max_len for s in slots], np.int64)
        salts = np.array([slot_salt(s.name) for s in slots], np.uint64)
        width = int(max_lens.max())
        uniq, idx, msk, clk = _dedup_table(
            np.concatenate(ids).astype(np.int64), bases, offsets, max_lens, salts, labels,
            batch_size, width,
        )  # fmt: skip
        for j, s in enumerate(slots):
            index[s.name] = idx[j, :, : s.max_len]
            mask[s.name] = msk[j, :, : s.max_len]
        unique_ids[table.name] = uniq
        clicks[table.name] = clk
    return HostBatch(n, labels, weights, dense, unique_ids, clicks, index, mask)


def batches(ex: Examples, spec: FeatureSpec, batch_size: int, min_batches: int = 0):
    """Consecutive batches of ``ex`` (the last one padded), then empty ones up to
    ``min_batches`` (workers in lockstep run the same number of steps)."""
    n = 0
    for lo in range(0, len(ex), batch_size):
        yield make_batch(ex.take(lo, min(len(ex), lo + batch_size)), spec, batch_size)
        n += 1
    for _ in range(n, min_batches):
        yield make_batch(ex.take(0, 0), spec, batch_size)
