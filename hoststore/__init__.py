"""hoststore: a host-resident, growing, int64-keyed embedding store (numpy + numba, no jax).

Where things live: the store interface and the in-process store in :mod:`hoststore.store`;
one table's storage in :mod:`hoststore.table` (split over threads by
:mod:`hoststore.sharded`); who gets a row in :mod:`hoststore.admission`, who loses it in
:mod:`hoststore.eviction`; cold rows on disk (tables bigger than RAM) in
:mod:`hoststore.disk_tier`; a pass's rows lent to a device in
:mod:`hoststore.device_pass`; update rules in :mod:`hoststore.optimizers`; base / delta /
serving files in :mod:`hoststore.snapshot`; shard servers and their client in
:mod:`hoststore.rpc` (imported on demand: an in-process store never loads gRPC).
"""

from hoststore import admission, device_pass, eviction, optimizers, snapshot
from hoststore._hashing import mix64_np as hash64
from hoststore._hashing import shard_of
from hoststore.admission import Admission, always, count_filter, probability, show_click
from hoststore.config import Initializer, TableConfig, normal, uniform, zeros
from hoststore.dedup import Dedup, SlotDedup, dedup, dedup_slots
from hoststore.device_pass import PassRows
from hoststore.disk_tier import DiskTier
from hoststore.eviction import Eviction
from hoststore.initializers import initial_rows
from hoststore.optimizers import SparseOptimizer
from hoststore.sharded import ShardedTable
from hoststore.store import LocalStore, Saved, Store, StoreError
from hoststore.table import COUNT_COLUMNS, EmbeddingTable

__all__ = [
    "COUNT_COLUMNS",
    "Admission",
    "EmbeddingTable",
    "Eviction",
    "Initializer",
    "LocalStore",
    "PassRows",
    "Saved",
    "ShardedTable",
    "SparseOptimizer",
    "Store",
    "StoreError",
    "TableConfig",
    "admission",
    "device_pass",
    "always",
    "count_filter",
    "Dedup",
    "DiskTier",
    "SlotDedup",
    "dedup",
    "dedup_slots",
    "eviction",
    "hash64",
    "initial_rows",
    "normal",
    "optimizers",
    "probability",
    "shard_of",
    "show_click",
    "snapshot",
    "uniform",
    "zeros",
]
