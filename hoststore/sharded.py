"""ShardedTable: one logical table split by key hash over N in-process tables.

Each shard has its own lock, and the compiled kernels release the GIL, so a pull or push
runs its shards in parallel threads, and a pull and a push of different shards never wait
for each other. Shards route keys with :func:`hoststore.shard_of`, the same fixed hash a
multi-process deployment uses, and initial rows depend only on (seed, key), so a key's row
is the same whatever the shard count.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numba as nb
import numpy as np

from hoststore import device_pass
from hoststore._checks import check_ids, check_per_id, check_push
from hoststore._hashing import SHARD_SALT, mix64
from hoststore.config import TableConfig
from hoststore.disk_tier import DiskTier
from hoststore.table import COUNT_COLUMNS, EmbeddingTable

_S32 = np.uint64(32)


def merge_shard_stats(per: list[dict[str, Any]]) -> dict[str, Any]:
    """One table's stats from its shards': counts and growth seconds summed; the clock,
    the name, the config and per-row ratios taken from the first shard; a disk tier's
    merge error from any."""
    out = {k: v for k, v in per[0].items() if k != "config_json"}
    if "tag" in out and any(p.get("tag") != out["tag"] for p in per):
        out["tag"] = "<mixed>"  # shards hold different states (one was restarted, say)
    if "merge_error" in out:  # (a disk tier's last failed merge, on any shard)
        out["merge_error"] = next((p["merge_error"] for p in per if p["merge_error"]), "")
    for k, v in out.items():
        if (isinstance(v, int | np.integer) and k != "clock") or k == "growth_seconds":
            out[k] = sum(p[k] for p in per)
    out["shards"] = len(per)
    return out


@nb.njit(nogil=True, cache=True)
def split_by_shard(ids, num_shards):
    """(perm, offsets): ids[perm[offsets[s]:offsets[s+1]]] are shard s's ids, in order."""
    n = ids.shape[0]
    shard = np.empty(n, np.int64)
    counts = np.zeros(num_shards + 1, np.int64)
    for i in range(n):
        h = mix64(np.uint64(ids[i]) ^ SHARD_SALT)
        s = np.int64(((h >> _S32) * np.uint64(num_shards)) >> _S32)
        shard[i] = s
        counts[s + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    perm = np.empty(n, np.int64)
    for i in range(n):
        perm[fill[shard[i]]] = i
        fill[shard[i]] += 1
    return perm, offsets


class ShardedTable:
    """The EmbeddingTable interface over ``num_shards`` EmbeddingTables."""

    def __init__(self, config: TableConfig, num_shards: int, tier: DiskTier | None = None):
        if num_shards < 1:
            raise ValueError(f"num_shards must be >= 1, got {num_shards}")
        self.config = config
        # Capacity limits are global: each shard gets its share.
        share = lambda x: None if x is None else -(-x // num_shards)  # noqa: E731
        shard_cfg = dataclasses.replace(
            config,
            eviction=dataclasses.replace(config.eviction, max_rows=share(config.eviction.max_rows)),
            admission=dataclasses.replace(
                config.admission, max_pending=share(config.admission.max_pending)
            ),
        )
        shard_tier = None if tier is None else tier.split(num_shards)
        self.shards = [EmbeddingTable(shard_cfg, tier=shard_tier) for _ in range(num_shards)]
        self._pool = ThreadPoolExecutor(num_shards, thread_name_prefix=f"shard-{config.name}")

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for t in self.shards:
            t.close()

    def _map(self, fn, items):
        return list(self._pool.map(fn, items))

    def pull(
        self, ids: np.ndarray, *, train: bool, with_counts: bool = False, shows=None
    ) -> np.ndarray:
        ids = check_ids(ids)
        shows = check_per_id(shows, len(ids), "shows", 1.0)
        perm, off = split_by_shard(ids, len(self.shards))
        out = np.empty((len(ids), COUNT_COLUMNS * with_counts + self.config.dim), np.float32)

        def one(s):
            p = perm[off[s] : off[s + 1]]
            out[p] = self.shards[s].pull(ids[p], train=train, with_counts=with_counts,
                                         shows=shows[p])  # fmt: skip

        self._map(one, range(len(self.shards)))
        return out

    def push(
        self, ids, grads, *, shows=None, clicks=None, counts=None, assume_unique=False
    ) -> None:
        # Validate once, before any shard changes: a bad push changes nothing anywhere.
        ids, grads, shows, clicks, counts = check_push(self.config, ids, grads, shows, clicks,
                                                       counts)  # fmt: skip
        perm, off = split_by_shard(ids, len(self.shards))

        def one(s):
            p = perm[off[s] : off[s + 1]]
            self.shards[s].push_checked(ids[p], grads[p], shows[p], clicks[p], counts[p],
                                        assume_unique)  # fmt: skip

        self._map(one, range(len(self.shards)))

    def shrink(self) -> int:
        return sum(self._map(lambda t: t.shrink(), self.shards))

    def begin_pass(self, batches, *, with_counts: bool = False) -> device_pass.PassRows:
        batches = device_pass.check_batches(batches)  # before any shard changes
        positions = device_pass.split(batches, len(self.shards), split_by_shard)
        parts = self._map(lambda s: self.shards[s].begin_pass_checked(
            device_pass.part_batches(batches, positions, s), with_counts),
            range(len(self.shards)))  # fmt: skip
        return device_pass.merge(parts, positions, with_counts, [len(b[0]) for b in batches])

    def end_pass(self, keys: np.ndarray, weights: np.ndarray, state) -> None:
        keys, weights, state = device_pass.check_written(self.config, keys, weights, state)
        perm, off = split_by_shard(keys, len(self.shards))

        def one(s):
            p = perm[off[s] : off[s + 1]]
            self.shards[s].end_pass_checked(keys[p], weights[p], tuple(x[p] for x in state))

        self._map(one, range(len(self.shards)))

    def advance_clock(self, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"advance_clock needs n >= 0, got {n}")
        for t in self.shards:
            t.advance_clock(n)

    @property
    def clock(self) -> int:
        return self.shards[0].clock

    def __len__(self) -> int:
        return sum(len(t) for t in self.shards)

    def pending_count(self) -> int:
        return sum(t.pending_count() for t in self.shards)

    def row_stats(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return self._gather_stats(ids, "row_stats")

    def pending_stats(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return self._gather_stats(ids, "pending_stats")

    def _gather_stats(self, ids, method):
        ids = check_ids(ids)
        perm, off = split_by_shard(ids, len(self.shards))
        out = {}
        for s, t in enumerate(self.shards):
            p = perm[off[s] : off[s + 1]]
            for k, v in getattr(t, method)(ids[p]).items():
                out.setdefault(k, np.empty(len(ids), v.dtype))[p] = v
        return out

    def evicted_keys(self) -> np.ndarray:
        return np.concatenate([t.evicted_keys() for t in self.shards])

    def stats(self) -> dict[str, Any]:
        return merge_shard_stats([t.stats() for t in self.shards])
