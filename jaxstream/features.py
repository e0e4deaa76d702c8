"""Feature spec: which slots exist, which table each reads, and how multi-hot slots pool.

Tables may be shared by slots. Raw IDs are salted by slot before they reach the store, so
the same raw value in two slots is two features even in one shared table.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np

import hoststore


@dataclasses.dataclass(frozen=True)
class SlotSpec:
    name: str
    table: str
    pooling: str = "sum"  # "sum" or "mean" over the slot's IDs
    max_len: int = 1  # IDs kept per example (the rest are dropped)

    def __post_init__(self):
        if self.pooling not in ("sum", "mean"):
            raise ValueError(f"slot {self.name!r}: pooling must be 'sum' or 'mean'")
        if self.max_len < 1:
            raise ValueError(f"slot {self.name!r}: max_len must be >= 1")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """``counts`` (Paddle's CVM): every pulled ID also brings its store counters, and the
    model sees log(show + 1) and log(click + 1) - log(show + 1) beside its embedding, so
    each slot's input is two wider (see :func:`jaxstream.step.pooled_embeddings`)."""

    slots: tuple[SlotSpec, ...]
    tables: tuple[hoststore.TableConfig, ...]
    num_dense: int
    counts: bool = False

    def __post_init__(self):
        names = {t.name for t in self.tables}
        for s in self.slots:
            if s.table not in names:
                raise ValueError(f"slot {s.name!r} reads unknown table {s.table!r}")

    def table(self, name: str) -> hoststore.TableConfig:
        return next(t for t in self.tables if t.name == name)

    @property
    def count_columns(self) -> int:
        """Columns before the embedding in each pulled row (show, click) or 0."""
        return hoststore.COUNT_COLUMNS if self.counts else 0

    def slot_dims(self) -> list[int]:
        """Width of each slot's model input: its table's dim, plus the count features."""
        return [self.table(s.table).dim + self.count_columns for s in self.slots]

    def slots_of(self, table: str) -> list[SlotSpec]:
        return [s for s in self.slots if s.table == table]


@functools.lru_cache(maxsize=4096)
def slot_salt(name: str) -> np.uint64:
    return np.frombuffer(hashlib.blake2b(name.encode(), digest_size=8).digest(), np.uint64)[0]


def salt_ids(raw: np.ndarray, slot: str) -> np.ndarray:
    """Store keys of a slot's raw IDs: a bijection per slot, distinct across slots."""
    raw = np.ascontiguousarray(raw, np.int64).view(np.uint64)
    return hoststore.hash64(raw ^ slot_salt(slot)).view(np.int64)


def single_table_spec(
    slot_names: tuple[str, ...],
    num_dense: int,
    table: hoststore.TableConfig,
    max_len: int = 1,
    pooling: str = "sum",
    counts: bool = False,
) -> FeatureSpec:
    """Every slot in one shared table (Paddle's usual single sparse table)."""
    slots = tuple(SlotSpec(s, table.name, pooling, max_len) for s in slot_names)
    return FeatureSpec(slots, (table,), num_dense, counts)
