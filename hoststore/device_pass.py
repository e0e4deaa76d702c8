"""A pass trained on a device: what a store hands out at its start and takes back at its end.

Paddle's GPU parameter server (BuildPass / EndPass) and HugeCTR's embedding training cache
keep a pass's rows on the accelerator: the rows are pulled once, the sparse optimizer runs
inside the training step, and the rows go back to the store when the pass ends. Here a
store's ``begin_pass`` applies the pass's statistics in batch order first (each batch's
training pull, then its push's clicks: shows, admission, pending counters and new rows come
out as in a synchronous per-batch loop), then hands out the rows; ``end_pass`` takes the
trained weights and optimizer state back. With the device applying the same optimizer, the
table ends where staleness-0 per-batch training leaves it.

This module holds the pieces every store shares: the argument checks, the result, and the
split over shards and the merge back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from hoststore._checks import check_ids, check_per_id

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # distinct ids, occurrences, clicks


class PassRows(NamedTuple):
    """What ``begin_pass`` returns.

    ``found[i]``: which ids of batch i had a row at its pull (the others read the default
    value and their gradients are dropped); ``counts[i]``: with counts, each id's (show,
    click) before that pull, else empty; ``keys``: the pass's distinct ids, sorted;
    ``present``: which of them have a row now; ``weights`` and ``state``: those rows'
    embeddings and optimizer state columns (in the optimizer's order), one row per present
    key; ``clock``: the table's clock, which a learning-rate schedule reads."""

    found: list[np.ndarray]
    counts: list[np.ndarray]
    keys: np.ndarray
    present: np.ndarray
    weights: np.ndarray
    state: tuple[np.ndarray, ...]
    clock: int


def check_batches(batches: Sequence) -> list[Batch]:
    """Each batch as (int64 ids, float32 occurrences (default 1), float32 clicks (default
    0)), or a ValueError naming the flawed batch. A batch's ids must be distinct."""
    out = []
    for i, batch in enumerate(batches):
        if len(batch) != 3:
            raise ValueError(f"pass batch {i} must be (ids, occurrences, clicks)")
        ids = check_ids(batch[0], f"pass batch {i} ids")
        n = len(ids)
        occ = check_per_id(batch[1], n, f"pass batch {i} occurrences", 1.0)
        clicks = check_per_id(batch[2], n, f"pass batch {i} clicks")
        if n > 1 and len(np.unique(ids)) != n:
            raise ValueError(f"pass batch {i} repeats ids (a pass batch lists each id once)")
        out.append((ids, occ, clicks))
    return out


def check_written(keys, weights, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``end_pass``'s keys and weights, checked: (int64 keys, float32 [n, dim] weights)."""
    keys = check_ids(keys, "pass keys")
    weights = np.asarray(weights, np.float32)
    if weights.shape != (len(keys), dim):
        raise ValueError(f"pass weights must have shape ({len(keys)}, {dim}), "
                         f"got {weights.shape}")  # fmt: skip
    return keys, weights


def split(batches: list[Batch], parts: int, split_ids: Callable) -> list[list[np.ndarray]]:
    """For each batch, the positions of each part's ids: ``split_ids(ids, parts)`` is
    (perm, offsets) as :func:`hoststore.sharded.split_by_shard` gives it."""
    out = []
    for ids, _, _ in batches:
        perm, off = split_ids(ids, parts)
        out.append([perm[off[s] : off[s + 1]] for s in range(parts)])
    return out


def part_batches(batches: list[Batch], positions: list[list[np.ndarray]], s: int) -> list[Batch]:
    """Part ``s``'s share of every batch (possibly empty: each part sees every batch, so
    its per-pull counters advance as they would in a per-batch loop)."""
    return [tuple(x[pos[s]] for x in b) for b, pos in zip(batches, positions, strict=True)]


def merge(parts: list[PassRows], positions: list[list[np.ndarray]], with_counts: bool,
          sizes: list[int]) -> PassRows:  # fmt: skip
    """The parts' results as one: per-batch arrays back in each batch's order, keys sorted."""
    found, counts = [], []
    for i, n in enumerate(sizes):
        f = np.zeros(n, bool)
        c = np.zeros((n, 2), np.float32) if with_counts else np.empty((0, 2), np.float32)
        for s, p in enumerate(parts):
            pos = positions[i][s]
            f[pos] = p.found[i]
            if with_counts:
                c[pos] = p.counts[i]
        found.append(f)
        counts.append(c)
    keys = np.concatenate([p.keys for p in parts])
    order = np.argsort(keys, kind="stable")
    present = np.concatenate([p.present for p in parts])
    present_keys = np.concatenate([p.keys[p.present] for p in parts])
    row_order = np.argsort(present_keys, kind="stable")
    weights = np.concatenate([p.weights for p in parts])[row_order]
    state = tuple(np.concatenate(cols)[row_order] for cols in zip(*(p.state for p in parts)))
    return PassRows(found, counts, keys[order], present[order], weights, state, parts[0].clock)
