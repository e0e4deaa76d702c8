"""The store interface every store implements, and LocalStore, the in-process one.

The trainer talks to a :class:`Store` and never asks which kind it holds: a
:class:`LocalStore` (tables in this process, each optionally split over in-process shards)
or a :class:`hoststore.rpc.ShardedStore` (shard servers over gRPC) behave the same, down to
their errors: a bad argument is a ``ValueError`` before anything changes, a store that
fails or refuses a call raises :class:`StoreError`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from hoststore import snapshot
from hoststore.config import TableConfig, config_to_json
from hoststore.device_pass import PassRows
from hoststore.disk_tier import DiskTier
from hoststore.sharded import ShardedTable
from hoststore.table import EmbeddingTable


class StoreError(RuntimeError):
    """A store failed or refused a call; the message names the shard and its address.
    ``code`` is the gRPC status code of a remote failure (None in process)."""

    def __init__(self, message: str, code: Any = None):
        super().__init__(message)
        self.code = code


class Saved(NamedTuple):
    """What one ``save`` wrote: a snapshot directory per part (one for an in-process table,
    one per shard server) and each part's manifest. A delta continues each part's chain:
    pass ``manifests`` as the ``parent`` of the next delta."""

    paths: list[str]
    manifests: list[dict]


class Store(Protocol):
    @property
    def parts(self) -> int:
        """Snapshot parts a ``save`` writes, one chain each: 1 in process, one per shard
        server."""

    def create_table(self, config: TableConfig) -> None:
        """Creates the table, or does nothing if it exists with the same config."""

    def tables(self) -> dict[str, TableConfig]: ...

    def pull(
        self,
        table: str,
        ids: np.ndarray,
        *,
        train: bool,
        with_counts: bool = False,
        shows: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rows of ``ids``; a training pull counts ``shows[i]`` occurrences of each (1 by
        default) toward its statistics and admission."""

    def push(
        self,
        table: str,
        ids: np.ndarray,
        grads: np.ndarray,
        *,
        shows: np.ndarray | None = None,
        clicks: np.ndarray | None = None,
        counts: np.ndarray | None = None,
        assume_unique: bool = False,
    ) -> None:
        """Gradients of ``ids``; ``clicks`` (and extra ``shows``) join the statistics,
        ``counts`` are the occurrences each gradient sums (show-scaled rules divide by it)."""

    def begin_pass(self, table: str, batches, *, with_counts: bool = False) -> PassRows:
        """Starts a pass a device trains (see :mod:`hoststore.device_pass`): applies the
        statistics of ``batches`` ((distinct ids, occurrences, clicks) each) in order, as
        a synchronous per-batch loop would, and hands out the pass's rows."""

    def end_pass(self, table: str, keys: np.ndarray, weights: np.ndarray, state) -> None:
        """Writes back the weights and optimizer state a device trained in a pass."""

    def shrink(self) -> dict[str, int]:
        """One eviction pass per table; rows evicted per table. A remote store's client
        that tagged tables (:meth:`set_tag`) shrinks those only, not other runs' tables on
        the same shards; so does :meth:`advance_clock`."""

    def advance_clock(self, n: int = 1) -> None:
        """Every table's clock (unseen ticks, pending TTL) moves ``n`` ticks."""

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per table: rows, pending, clock, totals, memory, and ``tag``."""

    def set_tag(self, table: str, tag: str) -> None:
        """Records which run and checkpoint the table holds (``stats()[table]["tag"]``;
        empty after create_table and load; "<mixed>" when shards disagree). A remote
        store's client is then fenced: once another client loads or tags that table, the
        shards refuse this one's calls (StoreError, FAILED_PRECONDITION) instead of letting
        two runs train one table."""

    def fence(self, table: str, tag: str) -> None:
        """Another client of the same run (worker 0 of several) set ``tag`` on ``table``:
        this client's calls expect it from now on, as if it had set it (a remote store's
        fence, see :meth:`set_tag`; an in-process store, which no other client reaches,
        does nothing)."""

    def save(self, table: str, path: str, kind: str, parent: Sequence[dict] | None = None,
             **filters) -> Saved:  # fmt: skip
        """Writes a ``base``, ``delta`` (after ``parent``, the manifests of the previous
        save of this chain), ``serving`` or ``cache`` snapshot of ``table`` under
        ``path``. ``filters``: those of :func:`hoststore.snapshot.save` (``min_score``,
        ``max_unseen``, ``delta_threshold``, ``float16``, ``cache_fraction``)."""

    def load(self, table: str, chains: list[list[str]]) -> int:
        """Replaces ``table`` by the snapshot chains (base, then deltas), one chain per part
        that wrote them, whatever the part count; returns the rows loaded."""

    def close(self) -> None: ...


def same_config(a: TableConfig, b: TableConfig) -> bool:
    """Equal configs (optimizers compared by their spec: factories build new closures)."""
    if a == b:
        return True
    try:
        return config_to_json(a) == config_to_json(b)
    except ValueError:  # a schedule: comparable only by identity
        return False


class LocalStore:
    """In-process store: one table per config, each split over ``shards`` in-process shards
    (1: a plain :class:`EmbeddingTable`; more: a :class:`ShardedTable` whose shards pull
    and push in parallel threads). With a disk ``tier``, each table keeps the tier's RAM
    budget and puts its cold rows under the tier's directory."""

    parts = 1  # one snapshot per table, whatever the in-process shard count

    def __init__(
        self, configs: Sequence[TableConfig] = (), shards: int = 1, tier: DiskTier | None = None
    ):
        if shards < 1:
            raise ValueError(f"shards must be >= 1, got {shards}")
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be unique, got {names}")
        self.shards = shards
        self.tier = tier
        self._tables: dict[str, EmbeddingTable | ShardedTable] = {}
        self._tags: dict[str, str] = {}
        for c in configs:
            self.create_table(c)

    @classmethod
    def from_tables(cls, tables: dict[str, EmbeddingTable | ShardedTable]) -> LocalStore:
        """A store over tables built elsewhere (e.g. a serving copy of snapshots)."""
        store = cls()
        store._tables = dict(tables)
        return store

    def table(self, name: str) -> EmbeddingTable | ShardedTable:
        """The table object itself (in process only: for inspection and tests)."""
        try:
            return self._tables[name]
        except KeyError:
            raise ValueError(f"unknown table {name!r}; have {sorted(self._tables)}") from None

    def create_table(self, config: TableConfig) -> None:
        have = self._tables.get(config.name)
        if have is None:
            self._tables[config.name] = snapshot.new_table(config, self.shards, self.tier)
            self._tags[config.name] = ""
        elif not same_config(have.config, config):
            raise ValueError(f"table {config.name!r} exists with another config")

    def tables(self) -> dict[str, TableConfig]:
        return {n: t.config for n, t in self._tables.items()}

    def pull(self, table: str, ids: np.ndarray, *, train: bool, with_counts: bool = False,
             shows=None):  # fmt: skip
        return self.table(table).pull(ids, train=train, with_counts=with_counts, shows=shows)

    def push(self, table, ids, grads, *, shows=None, clicks=None, counts=None,
             assume_unique=False) -> None:  # fmt: skip
        self.table(table).push(ids, grads, shows=shows, clicks=clicks, counts=counts,
                               assume_unique=assume_unique)  # fmt: skip

    def begin_pass(self, table: str, batches, *, with_counts: bool = False) -> PassRows:
        return self.table(table).begin_pass(batches, with_counts=with_counts)

    def end_pass(self, table: str, keys: np.ndarray, weights: np.ndarray, state) -> None:
        self.table(table).end_pass(keys, weights, state)

    def shrink(self) -> dict[str, int]:
        return {n: t.shrink() for n, t in self._tables.items()}

    def advance_clock(self, n: int = 1) -> None:
        for t in self._tables.values():
            t.advance_clock(n)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {n: {**t.stats(), "tag": self._tags.get(n, "")} for n, t in self._tables.items()}

    def set_tag(self, table: str, tag: str) -> None:
        self.table(table)
        self._tags[table] = tag

    def fence(self, table: str, tag: str) -> None:
        self.table(table)

    def save(self, table: str, path: str, kind: str, parent: Sequence[dict] | None = None,
             *, min_score: float | None = None, max_unseen: int | None = None,
             delta_threshold: float | None = None, float16: bool = False,
             cache_fraction: float = 0.1) -> Saved:  # fmt: skip
        if parent is not None and len(parent) != 1:
            raise ValueError(f"an in-process table continues one chain, not {len(parent)}")
        m = snapshot.save(self.table(table), path, kind, parent[0] if parent else None,
                          min_score=min_score, max_unseen=max_unseen,
                          delta_threshold=delta_threshold, float16=float16,
                          cache_fraction=cache_fraction)  # fmt: skip
        return Saved([os.path.abspath(path)], [m])

    def load(self, table: str, chains: list[list[str]]) -> int:
        config = self.table(table).config
        loaded = snapshot.load_chains(chains, config, shards=self.shards, tier=self.tier)
        self._tables[table].close()
        self._tables[table] = loaded
        self._tags[table] = ""
        return len(loaded)

    def close(self) -> None:
        for t in self._tables.values():
            t.close()
