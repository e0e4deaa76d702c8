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
    engines: tuple[str, ...] = ("rocksdict", "lmdb")


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
    raw = keys.astype(">i8").tobytes()
    return [raw[i : i + 8] for i in range(0, len(raw), 8)]


class _Rocks:
    name = "RocksDB (rocksdict)"
    fixed_bytes = (64 + 32) << 20  # its write buffer and block cache, as configured below

    def __init__(self, path: str):
        import rocksdict

        opts = rocksdict.Options(raw_mode=True)
        opts.set_write_buffer_size(64 << 20)
        table = rocksdict.BlockBasedOptions()
        table.set_bloom_filter(10, False)  # ~10 bits per key: absent keys rarely touch disk
        table.set_block_cache(rocksdict.Cache(32 << 20))
        opts.set_block_based_table_factory(table)
        self.db = rocksdict.Rdict(path, opts)
        self._rocksdict = rocksdict

    def write(self, keys: list[bytes], values: list[bytes]) -> None:
        wb = self._rocksdict.WriteBatch(raw_mode=True)
        for k, v in zip(keys, values, strict=True):
            wb.put(k, v)
        self.db.write(wb)

    def read(self, keys: list[bytes]) -> list:
        return self.db[keys]  # multi_get

    def close(self) -> None:
        self.db.close()


class _Lmdb:
    name = "LMDB (lmdb)"
    fixed_bytes = 0

    def __init__(self, path: str):
        import lmdb

        self.env = lmdb.open(path, map_size=1 << 36, writemap=True, metasync=False)

    def write(self, keys: list[bytes], values: list[bytes]) -> None:
        with self.env.begin(write=True) as txn, txn.cursor() as cur:
            cur.putmulti(zip(keys, values, strict=True))

    def read(self, keys: list[bytes]) -> list:
        with self.env.begin(buffers=False) as txn:
            return [txn.get(k) for k in keys]

    def close(self) -> None:
        self.env.close()


_ENGINES = {"rocksdict": _Rocks, "lmdb": _Lmdb}


def measure(cfg: DiskBenchConfig, engine: str) -> dict[str, float]:
    path = tempfile.mkdtemp(prefix=f"disk_{engine}_")
    try:
        keys = _keys(cfg.rows, 0)
        values = np.random.default_rng(1).integers(0, 255, (cfg.rows, cfg.value_bytes),
                                                   dtype=np.uint8)  # fmt: skip
        rss0 = _rss_mb()
        db = _ENGINES[engine](path)
        t0 = time.perf_counter()
        chunk = 200_000  # rows per write batch (a shrink's or an eviction's worth)
        for lo in range(0, cfg.rows, chunk):
            part = slice(lo, lo + chunk)
            raw = values[part].tobytes()
            db.write(
                _be(np.sort(keys[part])),
                [raw[i : i + cfg.value_bytes] for i in range(0, len(raw), cfg.value_bytes)],
            )
        write_s = time.perf_counter() - t0
        rng = np.random.default_rng(2)
        hit_s = miss_s = 0.0
        for _ in range(cfg.batches):
            want = _be(np.sort(rng.choice(keys, cfg.batch, replace=False)))
            t0 = time.perf_counter()
            got = db.read(want)
            hit_s += time.perf_counter() - t0
            assert all(v is not None for v in got)
            absent = _be(np.sort(rng.integers(-(2**63), 2**63 - 1, cfg.batch, dtype=np.int64)))
            t0 = time.perf_counter()
            got = db.read(absent)
            miss_s += time.perf_counter() - t0
        rss = _rss_mb() - rss0
        db.close()
        size = sum(os.stat(os.path.join(d, f)).st_blocks * 512  # allocated, not apparent
                   for d, _, fs in os.walk(path) for f in fs)  # fmt: skip
        n = cfg.batch * cfg.batches
        return {"write_rows_per_s": cfg.rows / write_s,
                "read_hits_per_s": n / hit_s, "read_misses_per_s": n / miss_s,
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
        "keys/s | disk bytes/row | RSS bytes/row |",
        "|---|---|---|---|---|---|",
    ]
    for engine, m in r.items():
        cells = [_ENGINES[engine].name, f"{m['write_rows_per_s'] / 1e6:.2f} M",
                 f"{m['read_hits_per_s'] / 1e3:,.0f} K", f"{m['read_misses_per_s'] / 1e3:,.0f} K",
                 f"{m['disk_bytes_per_row']:.1f}", f"{m['rss_bytes_per_row']:.1f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
