"""Deduplication of a batch's keys: one row per distinct key, one count per occurrence.

A trainer pulls each distinct key of a batch once and pushes one gradient per key; the
statistics count every occurrence (Paddle counts a show per occurrence, a click per
occurrence in a clicked example). Both functions are compiled and keep first-seen order.

Example::

    d = hoststore.dedup(np.array([7, 3, 7], np.int64), weights=np.array([1.0, 0.0, 1.0]))
    d.unique, d.inverse, d.counts, d.weight_sums   # [7, 3], [0, 1, 0], [2, 1], [2., 0.]
"""

from __future__ import annotations

from typing import NamedTuple

import numba as nb
import numpy as np

from hoststore import _index as ix
from hoststore._hashing import mix64


class Dedup(NamedTuple):
    """Distinct keys of a block in first-seen order, with ``keys == unique[inverse]``."""

    unique: np.ndarray  # [U] int64
    inverse: np.ndarray  # [n] int64
    counts: np.ndarray  # [U] int64 occurrences of each unique key
    weight_sums: np.ndarray | None  # [U] float32 sum of ``weights`` over each key's occurrences


def dedup(keys: np.ndarray, weights: np.ndarray | None = None) -> Dedup:
    """The distinct keys of ``keys`` in first-seen order (O(n)), each key's occurrence
    count and, given per-occurrence ``weights`` (e.g. labels), their sums per key."""
    uniq, inverse, counts = ix.unique_with_inverse(keys)
    sums = None
    if weights is not None:
        sums = np.bincount(inverse, weights=weights, minlength=len(uniq)).astype(np.float32)
    return Dedup(uniq, inverse, counts, sums)


class SlotDedup(NamedTuple):
    """A batch's multi-slot IDs as store keys, deduplicated (see :func:`dedup_slots`)."""

    unique: np.ndarray  # [U] int64 store keys, first seen over (slot, example, position)
    counts: np.ndarray  # [U] float32 occurrences
    clicks: np.ndarray  # [U] float32 occurrences in examples with label 1
    index: np.ndarray  # [S, batch, width] int32: row of each kept ID among ``unique``
    mask: np.ndarray  # [S, batch, width] float32: 1 where an ID was kept


def dedup_slots(
    ids: np.ndarray,
    bases: np.ndarray,
    offsets: np.ndarray,
    max_lens: np.ndarray,
    salts: np.ndarray,
    labels: np.ndarray,
    batch: int,
    first: int = 0,
    count: int | None = None,
) -> SlotDedup:
    """The store keys of a batch's slots, deduplicated in one compiled pass.

    Slot s of example i holds ``ids[bases[s] + offsets[s, i] : bases[s] + offsets[s, i + 1]]``
    (CSR per slot, all slots in one array); the first ``max_lens[s]`` are kept. The batch
    is examples ``first`` to ``first + count`` (default: all of ``offsets``), so one block's
    arrays serve each of its batches as they are. A raw ID's key in slot s is
    ``hash64(id ^ salts[s])``: a bijection per slot, so the same raw value in two slots is
    two keys. ``labels`` ([batch], the batch's own) make the click counts.
    """
    if count is None:
        count = offsets.shape[1] - 1 - first
    return SlotDedup(*_dedup_slots(ids, bases, offsets, first, count, max_lens, salts, labels,
                                   batch, int(max_lens.max())))  # fmt: skip


@nb.njit(nogil=True, cache=True)
def _dedup_slots(ids, bases, offsets, first, n, max_lens, salts, labels, batch, width):
    n_slots = offsets.shape[0]
    total = 0
    for s in range(n_slots):
        for i in range(first, first + n):
            total += min(offsets[s, i + 1] - offsets[s, i], max_lens[s])
    scratch = np.full(int(total / ix.MAX_LOAD) + 9, -1, np.int32)
    uniq = np.empty(total, np.int64)
    counts = np.zeros(total, np.float32)
    clicks = np.zeros(total, np.float32)
    index = np.zeros((n_slots, batch, width), np.int32)
    mask = np.zeros((n_slots, batch, width), np.float32)
    u = 0
    for s in range(n_slots):
        for i in range(n):
            a = bases[s] + offsets[s, first + i]
            m = min(offsets[s, first + i + 1] - offsets[s, first + i], max_lens[s])
            for j in range(m):
                k = np.int64(mix64(np.uint64(ids[a + j]) ^ salts[s]))
                e, u = ix.find_or_append(scratch, uniq, k, u)
                index[s, i, j] = e
                mask[s, i, j] = 1.0
                counts[e] += 1.0
                clicks[e] += labels[i]
    return uniq[:u], counts[:u], clicks[:u], index, mask
