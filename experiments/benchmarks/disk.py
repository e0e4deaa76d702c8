"""Storage engines for a disk tier of cold rows, measured against what the tier needs.

A cold row is a key (8 bytes) and its value (embedding, optimizer state, statistics: about
70 bytes at dim 8 with rowwise AdaGrad). The tier needs batched random point reads (a
batch's cold keys, found or not), batched writes (rows leaving RAM), a full scan (shrink,
base snapshots), crash safety, and little RAM per key. Each engine loads the same rows,
then reads batches of random present keys and of absent keys. RSS is the process's resident
memory (anonymous: the OS page cache, which the kernel reclaims, is not counted) gained
from opening the store to after the reads.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time

import numpy as np


@dataclasses.dataclass(frozen=True)
class DiskBenchConfig:
    rows: int = 5_000_000
    value_bytes: int = 72
    batch: int = 50_000  # keys per read batch
    batches: int = 10
    engines: tuple[str, ...] = ("rocksdict", "lmdb", "runs")


def _rss_mb() -> float:
    """Anonymous resident memory (file pages mapped in, e.g. LMDB's, are page cache)."""
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))
    return kb / 1024


def _keys(n: int, seed: int) -> np.ndarray:
    """Distinct int64 keys spread over the whole range, as big-endian bytes order them."""
    rng = np.random.default_rng(seed)
    return np.unique(rng.integers(-(2**63), 2**63 - 1, int(n * 1.01), dtype=np.int64))[:n]


def _be(keys: np.ndarray) -> list[bytes]:
    """Keys as big-endian bytes, which sort like the integers once the sign bit flips."""
    raw = (keys.view(np.uint64) ^ np.uint64(1 << 63)).astype(">u8").tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


def _split(values: np.ndarray) -> list[bytes]:
    raw, width = values.tobytes(), values.shape[1]
    return [raw[i : i + width] for i in range(0, len(raw), width)]


class _Rocks:
    name = "RocksDB (rocksdict)"
    fixed_bytes = (64 + 32) << 20  # its write buffer and block cache, as configured below

    def __init__(self, path: str, value_bytes: int):
        import rocksdict

        opts = rocksdict.Options(raw_mode=True)
        opts.set_write_buffer_size(64 << 20)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(10, False)  # ~10 bits per key: absent keys rarely touch disk
        table.set_block_cache(rocksdict.Cache(32 << 20))
        opts.set_block_based_table_factory(table)
        self.db = rocksdict.Rdict(path, opts)
        self._rocksdict = rocksdict

    def write(self, keys: np.ndarray, values: np.ndarray) -> None:
        wb = self._rocksdict.WriteBatch(raw_mode=True)
        for k, v in zip(_be(keys), _split(values), strict=True):
            wb.put(k, v)
        self.db.write(wb)

    def read(self, keys: np.ndarray) -> int:
        return sum(v is not None for v in self.db[_be(keys)])  # multi_get

    def scan(self) -> int:
        return sum(1 for _ in self.db.items())

    def close(self) -> None:
        self.db.close()


class _Lmdb:
    name = "LMDB (lmdb)"
    fixed_bytes = 0

    def __init__(self, path: str, value_bytes: int):
        import lmdb

        self.env = lmdb.open(path, map_size=1 << 36, writemap=True, metasync=False)

    def write(self, keys: np.ndarray, values: np.ndarray) -> None:
        with self.env.begin(write=True) as txn, txn.cursor() as cur:
            cur.putmulti(zip(_be(keys), _split(values), strict=True))

    def read(self, keys: np.ndarray) -> int:
        with self.env.begin(buffers=False) as txn:
            return sum(txn.get(k) is not None for k in _be(keys))

    def scan(self) -> int:
        with self.env.begin(buffers=False) as txn:
            return sum(1 for _ in txn.cursor())

    def close(self) -> None:
        self.env.close()


class _Runs:
    name = "sorted runs (hoststore's own)"
    fixed_bytes = 0

    def __init__(self, path: str, value_bytes: int):
        from hoststore.disk_tier import ColdRows

        self.cold = ColdRows(path, "bench", np.dtype([("v", "u1", (value_bytes,))]))

    def write(self, keys: np.ndarray, values: np.ndarray) -> None:
        rec = np.empty(len(keys), self.cold.dtype)
        rec["v"] = values
        self.cold.put(keys, rec)

    def read(self, keys: np.ndarray) -> int:
        return int(self.cold.get(keys)[0].sum())

    def scan(self) -> int:
        return sum(len(k) for k, _ in self.cold.scan(1 << 16))

    def close(self) -> None:
        pass  # the files stay to be counted (ColdRows.close would remove them)


_ENGINES = {"rocksdict": _Rocks, "lmdb": _Lmdb, "runs": _Runs}


def measure(cfg: DiskBenchConfig, engine: str) -> dict[str, float]:
    path = tempfile.mkdtemp(prefix=f"disk_{engine}_")
    try:
        keys = _keys(cfg.rows, 0)
        values = np.random.default_rng(1).integers(0, 255, (cfg.rows, cfg.value_bytes),
                                                   dtype=np.uint8)  # fmt: skip
        rss0 = _rss_mb()
        db = _ENGINES[engine](path, cfg.value_bytes)
        t0 = time.perf_counter()
        chunk = 200_000  # rows per write batch (a shrink's or an eviction's worth)
        for lo in range(0, cfg.rows, chunk):
            order = np.argsort(keys[lo : lo + chunk])
            db.write(keys[lo : lo + chunk][order], values[lo : lo + chunk][order])
        write_s = time.perf_counter() - t0
        db.read(keys[:10])  # compiled kernels, if any, compile outside the timings
        rng = np.random.default_rng(2)
        hit_s = miss_s = 0.0
        for _ in range(cfg.batches):
            want = np.sort(rng.choice(keys, cfg.batch, replace=False))
            t0 = time.perf_counter()
            assert db.read(want) == len(want)
            hit_s += time.perf_counter() - t0
            absent = np.sort(rng.integers(-(2**63), 2**63 - 1, cfg.batch, dtype=np.int64))
            t0 = time.perf_counter()
            db.read(absent)
            miss_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        assert db.scan() == cfg.rows
        scan_s = time.perf_counter() - t0
        rss = _rss_mb() - rss0
        db.close()
        size = sum(os.stat(os.path.join(d, f)).st_blocks * 512  # allocated, not apparent
                   for d, _, fs in os.walk(path) for f in fs)  # fmt: skip
        n = cfg.batch * cfg.batches
        return {"write_rows_per_s": cfg.rows / write_s,
                "read_hits_per_s": n / hit_s, "read_misses_per_s": n / miss_s,
                "scan_rows_per_s": cfg.rows / scan_s,
                "disk_bytes_per_row": size / cfg.rows,
                "rss_bytes_per_row": max(rss, 0.0) * 2**20 / cfg.rows,
                # what grows with the rows: the RSS less the engine's configured caches
                "ram_bytes_per_row": max(rss * 2**20 - db.fixed_bytes, 0.0) / cfg.rows}  # fmt: skip
    finally:
        shutil.rmtree(path, ignore_errors=True)


def markdown(cfg: DiskBenchConfig, r: dict[str, dict[str, float]]) -> str:
    lines = [
        f"{cfg.rows:,} rows of {cfg.value_bytes} bytes under random int64 keys; reads in "
        f"sorted batches of {cfg.batch:,} random keys, {cfg.batches} batches each of present "
        "and absent keys, one thread, the files in the OS page cache (the tier's concern is "
        "the process's RSS; the kernel reclaims page cache). RSS: the process's anonymous "
        "memory gained from opening the store to after the reads.",
        "",
        "| engine | batched writes rows/s | point reads (present) keys/s | point reads (absent) "
        "keys/s | full scan rows/s | disk bytes/row | RSS bytes/row |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, m in r.items():
        cells = [_ENGINES[engine].name, f"{m['write_rows_per_s'] / 1e6:.2f} M",
                 f"{m['read_hits_per_s'] / 1e3:,.0f} K", f"{m['read_misses_per_s'] / 1e3:,.0f} K",
                 f"{m['scan_rows_per_s'] / 1e6:.2f} M",
                 f"{m['disk_bytes_per_row']:.1f}", f"{m['rss_bytes_per_row']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
