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

from hoststore._checks import all_finite, check_ids, check_per_id

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # distinct ids, occurrences, clicks


class PassRows(NamedTuple):
    """What ``begin_pass`` returns.

    ``found[i]``: which ids of batch i had a row at its pull (the others read the default
    value and their gradients are dropped); ``counts[i]``: with counts, each id's (show,
    click) before that pull, else empty; ``slots[i]``: each id's row among ``weights``
    (-1: no row by the end of the pass); ``keys``: the pass's distinct ids, in the order
    the store lends them; ``present``: which of them have a row now; ``weights`` and
    ``state``: those rows' embeddings and optimizer state columns (in the optimizer's
    order), one row per present key, in key order; ``clock``: the table's clock, which a
    learning-rate schedule reads."""

    found: list[np.ndarray]
    counts: list[np.ndarray]
    slots: list[np.ndarray]
    keys: np.ndarray
    present: np.ndarray
    weights: np.ndarray
    state: tuple[np.ndarray, ...]
    clock: int


def check_batches(batches: Sequence) -> list[Batch]:
    """Each batch as (int64 ids, float32 occurrences (default 1), float32 clicks (default
    0)), or a ValueError naming the flawed batch. A batch's ids are promised distinct (a
    trainer's deduplicated batch), as with ``push(assume_unique=True)``: not checked."""
    out = []
    for i, batch in enumerate(batches):
        if len(batch) != 3:
            raise ValueError(f"pass batch {i} must be (ids, occurrences, clicks)")
        ids = check_ids(batch[0], f"pass batch {i} ids")
        n = len(ids)
        occ = check_per_id(batch[1], n, f"pass batch {i} occurrences", 1.0)
        clicks = check_per_id(batch[2], n, f"pass batch {i} clicks")
        out.append((ids, occ, clicks))
    return out


def state_layout(config) -> list[tuple[np.dtype, tuple[int, ...]]]:
    """Each optimizer state column's little-endian dtype and per-row shape (what travels
    between a client and a shard server)."""
    return [(col.dtype.newbyteorder("<"), col.shape[1:])
            for col in config.optimizer.init(0, config.dim)]  # fmt: skip


def check_written(config, keys, weights, state) -> tuple[np.ndarray, np.ndarray, tuple]:
    """``end_pass``'s arguments checked against the table's ``config``: int64 keys,
    float32 [n, dim] finite weights, the optimizer's state columns [n, ...] (finite where
    float); or a ValueError naming the flaw."""
    keys = check_ids(keys, "pass keys")
    n = len(keys)
    weights = np.ascontiguousarray(weights, np.float32)
    if weights.shape != (n, config.dim):
        raise ValueError(f"pass weights must have shape ({n}, {config.dim}), "
                         f"got {weights.shape}")  # fmt: skip
    layout = state_layout(config)
    if len(state) != len(layout):
        raise ValueError(f"pass state must have {len(layout)} columns "
                         f"({config.optimizer.name}), got {len(state)}")  # fmt: skip
    state = tuple(np.ascontiguousarray(x, dt) for x, (dt, _) in zip(state, layout, strict=True))
    for x, (_, shape) in zip(state, layout, strict=True):
        if x.shape != (n, *shape):
            raise ValueError(f"a pass state column must have shape {(n, *shape)}, "
                             f"got {x.shape}")  # fmt: skip
    for what, x in [("weights", weights), *(("state", x) for x in state if x.dtype.kind == "f")]:
        if not all_finite(x):
            raise ValueError(f"pass {what} contain NaN or Inf")
    return keys, weights, state


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
    """The parts' results as one: per-batch arrays back in each batch's order, the parts'
    rows one after the other (slots shifted to match)."""
    offsets = np.cumsum([0] + [int(p.present.sum()) for p in parts])
    found, counts, slots = [], [], []
    for i, n in enumerate(sizes):
        f = np.zeros(n, bool)
        c = np.zeros((n, 2), np.float32) if with_counts else np.empty((0, 2), np.float32)
        sl = np.empty(n, np.int32)
        for s, p in enumerate(parts):
            pos = positions[i][s]
            f[pos] = p.found[i]
            sl[pos] = np.where(p.slots[i] >= 0, p.slots[i] + offsets[s], -1)
            if with_counts:
                c[pos] = p.counts[i]
        found.append(f)
        counts.append(c)
        slots.append(sl)
    keys = np.concatenate([p.keys for p in parts])
    present = np.concatenate([p.present for p in parts])
    weights = np.concatenate([p.weights for p in parts])
    state = tuple(np.concatenate(cols) for cols in zip(*(p.state for p in parts)))
    return PassRows(found, counts, slots, keys, present, weights, state, parts[0].clock)
