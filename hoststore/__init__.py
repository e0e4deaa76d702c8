"""hoststore: a host-resident, growing, int64-keyed embedding store (numpy + numba, no jax)."""

from hoststore import optimizers
from hoststore.config import (
    Admission,
    Eviction,
    Initializer,
    TableConfig,
    always,
    count_filter,
    normal,
    probability,
    show_click,
    uniform,
    zeros,
)
from hoststore.hashing import shard_of
from hoststore.initializers import initial_rows
from hoststore.optimizers import SparseOptimizer
from hoststore.sharded import ShardedTable
from hoststore.store import LocalStore
from hoststore.table import COUNT_COLUMNS, EmbeddingTable

__all__ = [
    "COUNT_COLUMNS",
    "Admission",
    "EmbeddingTable",
    "Eviction",
    "Initializer",
    "LocalStore",
    "ShardedTable",
    "SparseOptimizer",
    "TableConfig",
    "always",
    "count_filter",
    "initial_rows",
    "normal",
    "optimizers",
    "probability",
    "shard_of",
    "show_click",
    "uniform",
    "zeros",
]
