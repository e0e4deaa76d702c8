"""From parsed examples to one padded, deduplicated host batch.

Shapes are padded to a few buckets so the jitted step compiles once per bucket: the batch
to ``batch_size`` (padding rows weigh 0) and each table's unique IDs to a power of two.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hoststore.index import unique_with_inverse
from jaxstream.data.examples import Examples
from jaxstream.features import FeatureSpec, salt_ids

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


def _padded_slot(ex: Examples, slot: str, max_len: int, batch: int):
    """[batch, max_len] raw IDs and mask of one slot (extra IDs beyond max_len dropped)."""
    offs = ex.slot_offsets[slot]
    n = len(ex)
    lengths = np.minimum(np.diff(offs), max_len)
    rows = np.repeat(np.arange(n), lengths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    raw = np.zeros((batch, max_len), np.int64)
    mask = np.zeros((batch, max_len), np.float32)
    raw[rows, cols] = ex.slot_ids[slot][offs[rows] + cols]
    mask[rows, cols] = 1.0
    return raw, mask


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
        keys, where = [], []
        for s in slots:
            raw, m = _padded_slot(ex, s.name, s.max_len, batch_size)
            on = m > 0
            keys.append(salt_ids(raw[on], s.name))
            where.append(on)
            mask[s.name] = m
        uniq, inverse, _ = unique_with_inverse(np.concatenate(keys))
        start = 0
        label_sum = np.zeros(len(uniq), np.float64)
        for s, on, k in zip(slots, where, keys, strict=True):
            idx = np.zeros(on.shape, np.int32)
            idx[on] = inverse[start : start + len(k)]
            index[s.name] = idx
            example_of = np.nonzero(on)[0]
            label_sum += np.bincount(
                inverse[start : start + len(k)], weights=labels[example_of], minlength=len(uniq)
            )
            start += len(k)
        unique_ids[table.name] = uniq
        clicks[table.name] = label_sum.astype(np.float32)
    return HostBatch(n, labels, weights, dense, unique_ids, clicks, index, mask)


def batches(ex: Examples, spec: FeatureSpec, batch_size: int):
    """Consecutive batches of ``ex`` (the last one padded)."""
    for lo in range(0, len(ex), batch_size):
        yield make_batch(ex.take(lo, min(len(ex), lo + batch_size)), spec, batch_size)
