"""The store benchmarks (experiments/bench_store.py, bench_snapshot.py, bench_grpc.py are
their flag parsers): one table in process, snapshots, and shard servers over gRPC.

Every ratio compares two things measured in the same run, because machines are noisy.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time

import numpy as np

import hoststore as hs
from hoststore import optimizers, shard_of
from hoststore.table import EmbeddingTable

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StoreBenchConfig:
    rows: int = 10_000_000
    dim: int = 16
    batch_unique: int = 50_000
    new_fraction: float = 0.1
    batches: int = 20
    lookup_batch: int = 1_000_000
    lookup_threads: int = 2
    memory_rows: int = 2_000_000
    memory_dim: int = 8
    pending_keys: int = 1_000_000
    seed: int = 0


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _reference_adagrad(emb, acc, slots, grads, lr=0.05, eps=1e-7):
    """Raw numpy: take, per-element AdaGrad, scatter at precomputed slots (no hashing)."""
    w = emb.take(slots, axis=0)
    a = acc.take(slots, axis=0)
    a += grads * grads
    w -= lr * grads / np.sqrt(a + eps)
    emb[slots] = w
    acc[slots] = a
    return w


def _fill(table: EmbeddingTable, keys: np.ndarray, chunk: int = 1_000_000) -> float:
    t = time.perf_counter()
    for i in range(0, len(keys), chunk):
        table.pull(keys[i : i + chunk], train=True)
        if (i // chunk) % 5 == 4:
            log.info(
                "filled %d / %d rows (%.1fM rows/s)",
                i + chunk,
                len(keys),
                (i + chunk) / (time.perf_counter() - t) / 1e6,
            )
    return time.perf_counter() - t


def _batches(rng, keys, n_batches, batch, new_fraction):
    n_new = int(batch * new_fraction)
    out = []
    for _ in range(n_batches):
        old = rng.choice(len(keys), batch - n_new, replace=False)
        new = rng.integers(-(2**63), 2**63 - 1, n_new, dtype=np.int64, endpoint=True)
        out.append(np.concatenate([keys[old], new]))
    return out


def run(cfg: StoreBenchConfig) -> dict[str, float]:
    rng = np.random.default_rng(cfg.seed)
    res: dict[str, float] = {}

    # --- set up: a table of cfg.rows rows ----------------------------------------------
    opt = optimizers.adagrad(0.05)
    table = EmbeddingTable(hs.TableConfig("bench", cfg.dim, optimizer=opt, initial_capacity=1024))
    keys = rng.integers(-(2**63), 2**63 - 1, cfg.rows, dtype=np.int64, endpoint=True)
    keys = np.unique(keys)
    rng.shuffle(keys)
    fill_s = _fill(table, keys)
    res["rows"] = len(table)
    res["fill_rows_per_s"] = len(keys) / fill_s

    # --- pull + push vs raw numpy take + adagrad + scatter -----------------------------
    batches = _batches(rng, keys, cfg.batches + 2, cfg.batch_unique, cfg.new_fraction)
    grads = rng.normal(size=(cfg.batch_unique, cfg.dim)).astype(np.float32)
    ref_emb = np.zeros((len(keys), cfg.dim), np.float32)
    ref_acc = np.full((len(keys), cfg.dim), 0.1, np.float32)
    pull_t, push_t, ref_t = [], [], []
    for b, ids in enumerate(batches):
        slots = rng.choice(len(keys), cfg.batch_unique, replace=False)
        t0 = time.perf_counter()
        table.pull(ids, train=True)
        t1 = time.perf_counter()
        table.push(ids, grads, assume_unique=True)
        t2 = time.perf_counter()
        _reference_adagrad(ref_emb, ref_acc, slots, grads)
        t3 = time.perf_counter()
        if b >= 2:  # the first batches warm caches and compile nothing new, but skip them
            pull_t.append(t1 - t0)
            push_t.append(t2 - t1)
            ref_t.append(t3 - t2)
    res["pull_ms"] = 1e3 * float(np.median(pull_t))
    res["push_ms"] = 1e3 * float(np.median(push_t))
    res["reference_ms"] = 1e3 * float(np.median(ref_t))
    res["pull_push_vs_reference"] = (res["pull_ms"] + res["push_ms"]) / res["reference_ms"]
    res["pull_push_keys_per_s"] = cfg.batch_unique / ((res["pull_ms"] + res["push_ms"]) / 1e3)

    # --- lookups/s: read-only pulls of known keys --------------------------------------
    look = keys[rng.choice(len(keys), cfg.lookup_batch, replace=False)]
    res["lookups_per_s"] = cfg.lookup_batch / _best(lambda: table.pull(look, train=False), 5)
    table.lookup_threads = cfg.lookup_threads
    res["lookups_per_s_threads"] = cfg.lookup_batch / _best(
        lambda: table.pull(look, train=False), 5
    )
    table.lookup_threads = 1
    take_at = rng.integers(0, len(keys), cfg.lookup_batch)
    res["numpy_take_rows_per_s"] = cfg.lookup_batch / _best(
        lambda: ref_emb.take(take_at, axis=0), 5
    )

    # --- memory per stored feature and per pending key ----------------------------------
    for name, opt in (
        ("rowwise_adagrad", optimizers.rowwise_adagrad(0.05)),
        ("adagrad", optimizers.adagrad(0.05)),
    ):
        t = EmbeddingTable(hs.TableConfig("mem", cfg.memory_dim, optimizer=opt))
        _fill(t, rng.integers(-(2**63), 2**63 - 1, cfg.memory_rows, dtype=np.int64, endpoint=True))
        st = t.stats()
        res[f"allocated_bytes_per_row_{name}"] = st["bytes"] / st["rows"]
        res[f"capacity_bytes_per_row_{name}"] = st["bytes_per_row_at_capacity"]
    t = EmbeddingTable(
        hs.TableConfig(
            "pending", cfg.memory_dim, admission=hs.count_filter(1000, max_pending=cfg.pending_keys)
        )
    )
    _fill(t, rng.integers(-(2**63), 2**63 - 1, cfg.pending_keys, dtype=np.int64, endpoint=True))
    st = t.stats()
    res["pending_keys"] = st["pending"]
    res["bytes_per_pending_key"] = (st["pending_bytes"] + st["pending_index_bytes"]) / st["pending"]

    # --- scaling: 2 shards on 2 threads vs 1 shard on 1 thread ---------------------------
    res.update(_scaling(rng, cfg))
    return res


def _scaling(rng, cfg: StoreBenchConfig) -> dict[str, float]:
    n_rows = min(cfg.rows, 2_000_000)
    keys = rng.integers(-(2**63), 2**63 - 1, n_rows, dtype=np.int64, endpoint=True)
    batches = _batches(rng, keys, cfg.batches, cfg.batch_unique, cfg.new_fraction)
    grads = [rng.normal(size=(len(b), cfg.dim)).astype(np.float32) for b in batches]

    def make():
        return EmbeddingTable(hs.TableConfig("s", cfg.dim, optimizer=optimizers.adagrad(0.05)))

    def drive(table, parts):
        for ids, g in parts:
            table.pull(ids, train=True)
            table.push(ids, g, assume_unique=True)

    one = make()
    _fill(one, keys)
    t = time.perf_counter()
    drive(one, list(zip(batches, grads)))
    one_s = time.perf_counter() - t

    shard_keys = shard_of(keys, 2)
    shards = [make() for _ in range(2)]
    for s in range(2):
        _fill(shards[s], keys[shard_keys == s])
    work = [[], []]
    for ids, g in zip(batches, grads):
        sh = shard_of(ids, 2)
        for s in range(2):
            work[s].append((ids[sh == s], g[sh == s]))
    threads = [threading.Thread(target=drive, args=(shards[s], work[s])) for s in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    two_s = time.perf_counter() - t
    return {
        "one_shard_one_thread_s": one_s,
        "two_shards_two_threads_s": two_s,
        "two_shard_speedup": one_s / two_s,
    }


def markdown(cfg: StoreBenchConfig, r: dict[str, float]) -> str:
    d = cfg.memory_dim
    rows = [
        (f"table rows (dim {cfg.dim}, per-element AdaGrad)", f"{r['rows']:,.0f}"),
        ("fill (insert) rate", f"{r['fill_rows_per_s'] / 1e6:.2f} M rows/s"),
        (
            f"pull(train) of {cfg.batch_unique:,} ids, {cfg.new_fraction:.0%} new",
            f"{r['pull_ms']:.2f} ms",
        ),
        ("push of the same ids", f"{r['push_ms']:.2f} ms"),
        ("reference: numpy take + AdaGrad + scatter, same rows", f"{r['reference_ms']:.2f} ms"),
        ("**(pull + push) / reference** (target <= 2)", f"**{r['pull_push_vs_reference']:.2f}x**"),
        ("pull + push keys/s", f"{r['pull_push_keys_per_s'] / 1e6:.2f} M"),
        (
            f"read-only lookups (pull train=False, batch {cfg.lookup_batch:,}), 1 thread",
            f"{r['lookups_per_s'] / 1e6:.1f} M/s",
        ),
        (
            f"same, lookup_threads={cfg.lookup_threads} (target >= 25M/s)",
            f"{r['lookups_per_s_threads'] / 1e6:.1f} M/s",
        ),
        (
            "reference: numpy take of random rows, 1 thread",
            f"{r['numpy_take_rows_per_s'] / 1e6:.1f} M/s",
        ),
        (
            f"bytes per feature, dim {d}, rowwise AdaGrad, at capacity (target <= 80)",
            f"{r['capacity_bytes_per_row_rowwise_adagrad']:.1f}",
        ),
        (
            f"bytes per feature, dim {d}, rowwise AdaGrad, allocated / rows "
            f"({cfg.memory_rows:,} rows)",
            f"{r['allocated_bytes_per_row_rowwise_adagrad']:.1f}",
        ),
        (
            f"bytes per feature, dim {d}, per-element AdaGrad, at capacity",
            f"{r['capacity_bytes_per_row_adagrad']:.1f}",
        ),
        (
            f"bytes per feature, dim {d}, per-element AdaGrad, allocated / rows",
            f"{r['allocated_bytes_per_row_adagrad']:.1f}",
        ),
        (
            f"bytes per pending key ({r['pending_keys']:,.0f} pending; target <= 24)",
            f"{r['bytes_per_pending_key']:.1f}",
        ),
        ("1 shard, 1 thread: pull+push of the batches", f"{r['one_shard_one_thread_s']:.3f} s"),
        (
            "2 shards, 2 threads: same batches split by key hash",
            f"{r['two_shards_two_threads_s']:.3f} s",
        ),
        ("**2-shard speedup**", f"**{r['two_shard_speedup']:.2f}x**"),
    ]
    lines = ["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class SnapshotBenchConfig:
    rows: int = 10_000_000
    dim: int = 16
    changed_fraction: float = 0.01
    seed: int = 0


def run_snapshots(cfg: SnapshotBenchConfig, workdir: str) -> dict[str, float]:
    """Base write/read MB/s, restore time, and delta size for a small share of rows changed."""
    from hoststore import snapshot

    rng = np.random.default_rng(cfg.seed)
    tcfg = hs.TableConfig("snap", cfg.dim, optimizer=optimizers.adagrad(0.05))
    table = EmbeddingTable(tcfg)
    keys = rng.integers(-(2**63), 2**63 - 1, cfg.rows, dtype=np.int64, endpoint=True)
    _fill(table, keys)
    res: dict[str, float] = {"rows": len(table)}

    def size(m):
        return sum(f["bytes"] for f in m["files"].values())

    t = time.perf_counter()
    base = snapshot.save(table, os.path.join(workdir, "base"), "base")
    res["base_write_s"] = time.perf_counter() - t
    res["base_cut_s"] = base["cut_seconds"]
    res["base_mb"] = size(base) / 1e6
    changed = keys[rng.choice(len(keys), int(cfg.changed_fraction * len(keys)), replace=False)]
    table.pull(changed, train=True)
    table.push(changed, rng.normal(size=(len(changed), cfg.dim)).astype(np.float32))
    t = time.perf_counter()
    delta = snapshot.save(table, os.path.join(workdir, "delta"), "delta", base)
    res["delta_write_s"] = time.perf_counter() - t
    res["delta_mb"] = size(delta) / 1e6
    del table
    t = time.perf_counter()
    restored = snapshot.load([os.path.join(workdir, "base")], tcfg)
    res["base_restore_s"] = time.perf_counter() - t
    t = time.perf_counter()
    snapshot.load([os.path.join(workdir, "base"), os.path.join(workdir, "delta")], tcfg)
    res["base_plus_delta_restore_s"] = time.perf_counter() - t
    res["restored_rows"] = len(restored)
    return res


def snapshot_markdown(cfg: SnapshotBenchConfig, r: dict[str, float]) -> str:
    rows = [
        (f"table rows (dim {cfg.dim}, per-element AdaGrad)", f"{r['rows']:,.0f}"),
        ("base snapshot size", f"{r['base_mb']:,.0f} MB"),
        ("base write (checksummed, fsynced)", f"{r['base_write_s']:.1f} s = "
         f"{r['base_mb'] / r['base_write_s']:,.0f} MB/s"),
        ("base restore (verify + rebuild the index)", f"{r['base_restore_s']:.1f} s = "
         f"{r['base_mb'] / r['base_restore_s']:,.0f} MB/s"),
        (f"delta after {cfg.changed_fraction:.0%} of rows changed", f"{r['delta_mb']:,.1f} MB"
         f" = **{r['delta_mb'] / r['base_mb']:.2%} of the base** (target <= 2%)"),
        ("delta write", f"{r['delta_write_s']:.2f} s"),
        ("pushes blocked by the base's point-in-time cut (the copy under the lock)",
         f"{1e3 * r['base_cut_s']:,.0f} ms"),
        ("restore base + delta", f"{r['base_plus_delta_restore_s']:.1f} s"),
    ]  # fmt: skip
    return "\n".join(["| measure | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


@dataclasses.dataclass(frozen=True)
class GrpcBenchConfig:
    rows: int = 1_000_000
    dim: int = 16
    batch_unique: int = 50_000
    batches: int = 10
    seed: int = 0


def run_grpc(cfg: GrpcBenchConfig) -> dict[str, dict[str, float]]:
    """Pull/push latency and keys/s in process and through 1 and 2 gRPC shards."""
    from hoststore.rpc import LocalCluster
    from hoststore.store import LocalStore

    rng = np.random.default_rng(cfg.seed)
    tcfg = hs.TableConfig("bench", cfg.dim, optimizer=optimizers.adagrad(0.05))
    keys = rng.integers(-(2**63), 2**63 - 1, cfg.rows, dtype=np.int64, endpoint=True)
    batches = _batches(rng, keys, cfg.batches + 1, cfg.batch_unique, 0.1)
    grads = rng.normal(size=(cfg.batch_unique, cfg.dim)).astype(np.float32)

    def measure(store) -> dict[str, float]:
        for i in range(0, len(keys), 250_000):
            store.pull("bench", keys[i : i + 250_000], train=True)
        pulls, pushes = [], []
        for b, ids in enumerate(batches):
            t0 = time.perf_counter()
            store.pull("bench", ids, train=True)
            t1 = time.perf_counter()
            store.push("bench", ids, grads, assume_unique=True)
            t2 = time.perf_counter()
            if b:
                pulls.append(t1 - t0)
                pushes.append(t2 - t1)
        pull, push = float(np.median(pulls)), float(np.median(pushes))
        return {"pull_ms": 1e3 * pull, "push_ms": 1e3 * push,
                "keys_per_s": cfg.batch_unique / (pull + push)}  # fmt: skip

    out = {"in process": measure(LocalStore([tcfg]))}
    for n in (1, 2):
        log.info("starting %d shard server(s)", n)
        with LocalCluster(n) as cluster:
            store = cluster.connect()
            store.create_table(tcfg)
            out[f"gRPC, {n} shard{'s' if n > 1 else ''}"] = measure(store)
            store.close()
    return out


def grpc_markdown(cfg: GrpcBenchConfig, r: dict[str, dict[str, float]]) -> str:
    base = r["in process"]["keys_per_s"]
    lines = [
        f"{cfg.rows:,} rows, dim {cfg.dim}, AdaGrad; batches of {cfg.batch_unique:,} unique ids "
        "(10% new); shard servers are local processes on loopback (this machine's 2 cores "
        "are shared by client and servers).",
        "",
        "| store | pull ms | push ms | keys/s (pull+push) | vs in process |",
        "|---|---|---|---|---|",
    ]
    for name, m in r.items():
        kps = m["keys_per_s"]
        lines.append(f"| {name} | {m['pull_ms']:.1f} | {m['push_ms']:.1f} | "
                     f"{kps / 1e6:.2f} M | {kps / base:.2f}x |")  # fmt: skip
    return "\n".join(lines)
