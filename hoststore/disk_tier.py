"""The disk tier: cold rows of a table in RocksDB, so a table can outgrow its RAM budget.

:class:`DiskTier` is the setting (where, and how much RAM the table's rows may use);
:class:`ColdRows` is the storage of one table's (or shard's) cold rows: whole row records
keyed by the row's key, read back in one multi-get when a pull or push needs them. The
table decides what moves (:mod:`hoststore.table`); this module only stores and scans.

Why RocksDB (through ``rocksdict``): measured against LMDB for this access pattern
(``experiments/bench_disk.py``), it writes batches 1.5x faster, its memory is a memtable and
a block cache of sizes we set (LMDB maps the file, so every page read counts in the
process's RSS, which is what the tier must bound), and its bloom filters answer most
absent keys without a disk read. A file format of our own would have to redo all of that.

Crash model: the tier is scratch. Each table opens a fresh directory under
``DiskTier.path`` and removes it at close; directories left by a killed process are removed
by the next one to open there. The durable state is the checkpoint (base + deltas), written
from both tiers, as it is for RAM rows: a kill -9 loses what it loses without the tier.
The write-ahead log is off for the same reason (nothing reads it back).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import uuid
import weakref
from collections.abc import Iterator

import numpy as np

from hoststore._bloom import KeyFilter

_PREFIX = "hoststore-tier-"
_SIGN = np.uint64(1 << 63)
KEY_BYTES = 8
_SCAN_PIECE = 4096
_BATCH = 1 << 16  # rows per write batch (bounds the Python objects a write holds at once)
_MAX_FILTER_LAYERS = 4
# RocksDB memory, counted in the process's fixed overhead: the memtable that collects
# writes (two of them: one flushing while the other fills) and the block cache.
WRITE_BUFFER_BYTES = 8 << 20
BLOCK_CACHE_BYTES = 16 << 20


@dataclasses.dataclass(frozen=True)
class DiskTier:
    """Cold rows go to ``path`` (a local directory; each table or shard opens its own
    directory under it) once RAM holds more rows than the budget: ``memory_mb`` of row
    storage (record, embedding, optimizer state and index slot per row) or, exactly,
    ``max_rows`` rows. Not a :class:`~hoststore.TableConfig` field: it changes where rows
    live, not what the table computes, so snapshots load into tiered and all-RAM tables
    alike."""

    path: str
    memory_mb: float | None = None
    max_rows: int | None = None

    def __post_init__(self):
        if not self.path:
            raise ValueError("a disk tier needs a directory")
        if (self.memory_mb is None) == (self.max_rows is None):
            raise ValueError("a disk tier takes memory_mb or max_rows (one of them)")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0, got {self.memory_mb}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")

    def rows_for(self, bytes_per_row: float) -> int:
        """The RAM budget in rows for rows of ``bytes_per_row``."""
        if self.max_rows is not None:
            return self.max_rows
        return max(1, int(self.memory_mb * (1 << 20) / bytes_per_row))

    def split(self, parts: int) -> DiskTier:
        """Each of ``parts`` shards' share of the budget."""
        if self.max_rows is not None:
            return dataclasses.replace(self, max_rows=max(1, -(-self.max_rows // parts)))
        return dataclasses.replace(self, memory_mb=self.memory_mb / parts)


def encode_keys(keys: np.ndarray) -> list[bytes]:
    """int64 keys as 8-byte big-endian strings that sort like the integers (sign bit
    flipped), so a scan walks keys in order."""
    raw = (keys.view(np.uint64) ^ _SIGN).astype(">u8").tobytes()
    return [raw[i : i + KEY_BYTES] for i in range(0, len(raw), KEY_BYTES)]


def decode_keys(raw: list[bytes]) -> np.ndarray:
    flat = np.frombuffer(b"".join(raw), ">u8").astype(np.uint64)
    return (flat ^ _SIGN).view(np.int64)


def _load_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim() if os.name == "posix" else None


def release_freed_memory() -> None:
    """Hands memory the process freed back to the OS. glibc keeps freed heap memory (and,
    past its adaptive mmap threshold, even multi-megabyte numpy buffers) for reuse: the
    batches of records the tier moves would otherwise keep the RSS hundreds of MB above
    what is in use (measured: 1143 -> 907 MB after one trim in a tiered trainer)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _owner() -> str:
    """This process as tier directories name it: pid@host (a pid means nothing on another
    host, or in another container sharing the directory)."""
    return f"{os.getpid()}@{_safe(socket.gethostname())}"


def _remove_stale(parent: str) -> None:
    """Removes tier directories of this host whose process is gone (a kill -9 leaves them
    behind); another host's are left alone."""
    host = _safe(socket.gethostname())
    for name in os.listdir(parent):
        if not name.startswith(_PREFIX) or name.count("@") < 2:
            continue
        pid, owner_host, _ = name[len(_PREFIX) :].split("@", 2)
        if owner_host == host and pid.isdigit() and int(pid) != os.getpid() \
                and not _alive(int(pid)):  # fmt: skip
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


class ColdRows:
    """One table's cold rows: key -> a fixed-size record of ``dtype``. Not thread-safe:
    the owning table holds its lock around every call (RocksDB itself releases the GIL)."""

    def __init__(self, parent: str, name: str, dtype: np.dtype):
        import rocksdict  # only a tiered table loads RocksDB

        self._rd = rocksdict
        self.dtype = np.dtype(dtype)
        os.makedirs(parent, exist_ok=True)
        _remove_stale(parent)
        mine = f"{_PREFIX}{_owner()}@{_safe(name)}-{uuid.uuid4().hex[:8]}"
        self.path = os.path.join(parent, mine)
        opts = rocksdict.Options(raw_mode=True)
        opts.create_if_missing(True)
        opts.set_write_buffer_size(WRITE_BUFFER_BYTES)
        opts.set_max_write_buffer_number(2)
        # Rows are float embeddings and optimizer state: compression saves little disk and
        # costs every read a decompression (measured: 1.3x slower point reads with snappy).
        opts.set_compression_type(rocksdict.DBCompressionType.none())
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(10, False)  # ~1.25 bytes per key: absent keys skip the disk
        table.set_block_cache(rocksdict.Cache(BLOCK_CACHE_BYTES))
        opts.set_block_based_table_factory(table)
        self._db = rocksdict.Rdict(self.path, opts)
        wo = rocksdict.WriteOptions()
        wo.disable_wal = True  # scratch: see the module's crash model
        self._db.set_write_options(wo)
        self.count = 0
        # Keys that may be on disk, in RAM: a new key skips the engine (see _bloom.py).
        self.filter = KeyFilter()
        self._stale = 0  # keys deleted since the filter was built (it still says "maybe")
        # While a snapshot reads the rows of its cut, the rows on disk stay as they were:
        # keys that move to RAM meanwhile leave the disk when it ends (thaw).
        self._frozen = False
        self._deferred: list[np.ndarray] = []
        # Closed and removed at close(), or when the table is dropped or the process exits.
        self._finalizer = weakref.finalize(self, _close, self._db, self.path)

    def __len__(self) -> int:
        return self.count

    def _split(self, records: np.ndarray) -> list[bytes]:
        raw, size = np.ascontiguousarray(records).tobytes(), self.dtype.itemsize
        return [raw[i : i + size] for i in range(0, len(raw), size)]

    def _decode(self, values: list[bytes]) -> np.ndarray:
        return np.frombuffer(b"".join(values), self.dtype).copy()

    def put(self, keys: np.ndarray, records: np.ndarray, new: bool = True) -> None:
        """Writes records (a write batch per chunk); ``new``: keys not on disk before."""
        for lo in range(0, len(keys), _BATCH):
            wb = self._rd.WriteBatch(raw_mode=True)
            for k, v in zip(encode_keys(keys[lo : lo + _BATCH]),
                            self._split(records[lo : lo + _BATCH]), strict=True):  # fmt: skip
                wb.put(k, v)
            self._db.write(wb)
        if new:
            self.count += len(keys)
            self.filter.add(keys)
            if self.filter.layers > _MAX_FILTER_LAYERS:
                self._rebuild_filter()

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the keys on disk, their records)."""
        maybe = np.flatnonzero(self.filter.may_contain(keys))  # the engine sees only these
        values = self._db[encode_keys(keys[maybe])] if len(maybe) else []  # one multi-get
        found = np.zeros(len(keys), bool)
        found[maybe] = np.fromiter((v is not None for v in values), bool, len(values))
        return found, self._decode([v for v in values if v is not None])

    def take(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``get``, then the keys found leave the disk (they move to RAM; while frozen,
        when it thaws)."""
        found, records = self.get(keys)
        if self._frozen:
            self._deferred.append(keys[found])
            self.count -= int(found.sum())
        else:
            self.delete(keys[found])
        return found, records

    def freeze(self) -> None:
        """The rows on disk stay as they are (a snapshot reads them) until :meth:`thaw`;
        the owner puts nothing new meanwhile."""
        self._frozen = True

    def thaw(self) -> None:
        self._frozen = False
        moved, self._deferred = self._deferred, []
        if moved:
            self.count += sum(map(len, moved))
            self.delete(np.concatenate(moved))

    def delete(self, keys: np.ndarray) -> None:
        """Deletes keys that are on disk (the caller knows they are)."""
        if not len(keys):
            return
        wb = self._rd.WriteBatch(raw_mode=True)
        for k in encode_keys(keys):
            wb.delete(k)
        self._db.write(wb)
        self.count -= len(keys)
        self._stale += len(keys)
        if self._stale > self.count + (1 << 16):  # mostly stale: rebuild from a key scan
            self._rebuild_filter()

    def _rebuild_filter(self) -> None:
        """One layer for every key on disk, with a quarter more room."""
        self.filter = KeyFilter(self.count + self.count // 4)
        chunk: list[bytes] = []
        for k in self._db.keys():
            chunk.append(k)
            if len(chunk) == 1 << 16:
                self.filter.add(decode_keys(chunk))
                chunk = []
        if chunk:
            self.filter.add(decode_keys(chunk))
        self._stale = 0

    def scan(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every row in key order, ``chunk`` (up to a piece more) at a time: (keys,
        records), as of the start (a RocksDB iterator reads an implicit snapshot).
        rocksdict's own snapshots do not hold for iterators (measured: a scan of one shows
        later deletes), hence freeze."""
        # Rows are decoded _SCAN_PIECE at a time: a few thousand bytes objects stay in the
        # CPU caches (measured: 2.2M rows/s against 1.35M when 65K are held at once).
        keys, records, held = [], [], 0
        piece_keys, piece_values = [], []
        for k, v in self._db.items():
            piece_keys.append(k)
            piece_values.append(v)
            if len(piece_keys) == _SCAN_PIECE:
                keys.append(decode_keys(piece_keys))
                records.append(self._decode(piece_values))
                piece_keys, piece_values = [], []
                held += _SCAN_PIECE
                if held >= chunk:
                    yield np.concatenate(keys), np.concatenate(records)
                    keys, records, held = [], [], 0
        if piece_keys:
            keys.append(decode_keys(piece_keys))
            records.append(self._decode(piece_values))
        if keys:
            yield np.concatenate(keys), np.concatenate(records)

    def ram_bytes(self) -> int:
        """RAM that grows with the cold rows: the key filter (RocksDB's own is in its
        block cache and table readers, see ``rocksdb.estimate-table-readers-mem``)."""
        return self.filter.nbytes

    def disk_bytes(self) -> int:
        total = 0
        for root, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def close(self) -> None:
        """Closes the database and removes its directory (the tier is scratch)."""
        self._finalizer()


def _close(db, path: str) -> None:
    db.close()
    shutil.rmtree(path, ignore_errors=True)
