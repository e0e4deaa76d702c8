"""LocalStore: a set of named tables in this process, behind the store interface.

The interface (``pull``, ``push``, ``shrink``, ``advance_clock``, ``stats``, ``tables``) is
what the trainer talks to; the gRPC client implements the same one.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from hoststore.config import TableConfig
from hoststore.sharded import ShardedTable
from hoststore.table import EmbeddingTable


class Store(Protocol):
    def tables(self) -> dict[str, TableConfig]: ...

    def pull(
        self, table: str, ids: np.ndarray, *, train: bool, with_counts: bool = False
    ) -> np.ndarray: ...

    def push(
        self,
        table: str,
        ids: np.ndarray,
        grads: np.ndarray,
        *,
        shows: np.ndarray | None = None,
        clicks: np.ndarray | None = None,
        assume_unique: bool = False,
    ) -> None: ...

    def shrink(self) -> dict[str, int]: ...

    def advance_clock(self, n: int = 1) -> None: ...

    def stats(self) -> dict[str, dict[str, Any]]: ...


class LocalStore:
    """In-process store: one table per config, each split over ``shards`` in-process shards
    (1: a plain :class:`EmbeddingTable`; more: a :class:`ShardedTable` whose shards pull
    and push in parallel threads)."""

    def __init__(self, configs: list[TableConfig] | tuple[TableConfig, ...], shards: int = 1):
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"table names must be unique, got {names}")
        self._tables = {
            c.name: EmbeddingTable(c) if shards == 1 else ShardedTable(c, shards) for c in configs
        }

    @classmethod
    def from_tables(cls, tables: dict[str, EmbeddingTable | ShardedTable]) -> LocalStore:
        """A store over tables built elsewhere (e.g. loaded from snapshots)."""
        store = cls.__new__(cls)
        store._tables = dict(tables)
        return store

    def table(self, name: str) -> EmbeddingTable | ShardedTable:
        try:
            return self._tables[name]
        except KeyError:
            raise ValueError(f"unknown table {name!r}; have {sorted(self._tables)}") from None

    def tables(self) -> dict[str, TableConfig]:
        return {n: t.config for n, t in self._tables.items()}

    def pull(self, table: str, ids: np.ndarray, *, train: bool, with_counts: bool = False):
        return self.table(table).pull(ids, train=train, with_counts=with_counts)

    def push(self, table, ids, grads, *, shows=None, clicks=None, assume_unique=False) -> None:
        self.table(table).push(ids, grads, shows=shows, clicks=clicks, assume_unique=assume_unique)

    def shrink(self) -> dict[str, int]:
        return {n: t.shrink() for n, t in self._tables.items()}

    def advance_clock(self, n: int = 1) -> None:
        for t in self._tables.values():
            t.advance_clock(n)

    def stats(self) -> dict[str, dict[str, Any]]:
        return {n: t.stats() for n, t in self._tables.items()}
