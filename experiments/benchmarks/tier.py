"""The disk tier measured: RSS against the RAM budget for a table ten times its size, RAM
per cold feature, pull + push throughput on a Zipf stream against an all-RAM table, a
cold-miss batch, base snapshot and shrink speed over the disk tier, and a projection.

Each measurement that reads the process's RSS runs in a fresh process (``run_phase`` in a
subprocess of ``experiments/bench_tier.py``), so nothing else it allocated counts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

import hoststore as hs
from hoststore import snapshot


@dataclasses.dataclass(frozen=True)
class TierBenchConfig:
    rows: int = 50_000_000  # the table: ten times the RAM budget
    budget_rows: int = 5_000_000
    dim: int = 8
    batch: int = 200_000  # new keys per training pull while the table fills
    # Throughput: a Zipf stream over a table of zipf_rows keys whose head fits the budget.
    zipf_rows: int = 4_000_000
    # (Zipf exponent, RAM budget as a share of the rows) of each tiered run
    zipf_cases: tuple[tuple[float, float], ...] = ((1.3, 0.1), (1.3, 0.3), (1.3, 0.6),
                                                   (1.6, 0.1), (1.6, 0.3), (2.0, 0.1))  # fmt: skip
    zipf_batch: int = 100_000
    zipf_batches: int = 400  # long enough that spills and merges of several sizes fall in it
    cold_batch: int = 10_000
    shard_ram_gb: int = 256
    hot_fraction: float = 0.1
    disk_dir: str = ""  # where the tier and the snapshot go (default: a temporary directory)
    # End to end: train_stream.py on a generated stream whose table grows to ~475 MB, all in
    # RAM and with --store_memory_mb=e2e_memory_mb.
    e2e_hours: int = 6
    e2e_rows_per_hour: int = 200_000
    e2e_max_vocab: int = 4_000_000
    e2e_zipf: float = 0.9
    e2e_memory_mb: float = 32.0


_READ_THREADS = hs.DiskTier(".", max_rows=1).read_threads  # the default on this machine


def _cfg(c: TierBenchConfig, name: str = "bench") -> hs.TableConfig:
    # A shrink deletes the rows scored below 0.15: those shown once (a tenth, see _shows).
    return hs.TableConfig(name, c.dim, optimizer=hs.optimizers.adagrad(0.05),
                          eviction=hs.Eviction(min_score=0.15, nonclk_coeff=0.1))  # fmt: skip


def _shows(ids: np.ndarray) -> np.ndarray:
    return (1 + ids.view(np.uint64) % np.uint64(10)).astype(np.float32)


def _keys(lo: int, hi: int) -> np.ndarray:
    """Random-looking distinct int64 keys number lo..hi (a hash of the counter)."""
    return hs.hash64(np.arange(lo, hi, dtype=np.uint64)).view(np.int64)


def _status(field: str) -> float:
    """VmRSS / VmHWM of this process, MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    """Starts VmHWM over from the current RSS (Linux: clear_refs 5), so a later peak is that
    of what runs after."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _grads(c: TierBenchConfig, n: int) -> np.ndarray:
    return np.full((n, c.dim), 0.01, np.float32)


def rss_phase(c: TierBenchConfig) -> dict[str, float]:
    """A tiered table filled to ``rows`` with a RAM budget of ``budget_rows``: RSS at each
    stage, RAM per cold feature, fill rate, then a base snapshot and a shrink (MB/s)."""
    root = tempfile.mkdtemp(prefix="tier-bench-", dir=c.disk_dir or None)
    try:
        warm = hs.EmbeddingTable(_cfg(c, "warm"), tier=hs.DiskTier(root, max_rows=10))
        for i in range(3):  # compiles every kernel the fill uses, then goes away
            warm.pull(_keys(i * 100, i * 100 + 100), train=True)
            warm.push(_keys(i * 100, i * 100 + 100), _grads(c, 100))
        warm.close()
        del warm
        base_mb = _status("VmRSS")
        t = hs.EmbeddingTable(_cfg(c), tier=hs.DiskTier(root, max_rows=c.budget_rows))
        out = {"base_rss_mb": base_mb}
        t0 = time.perf_counter()
        for lo in range(0, c.rows, c.batch):
            ids = _keys(lo, min(lo + c.batch, c.rows))
            t.pull(ids, train=True, shows=_shows(ids))
            t.push(ids, _grads(c, len(ids)), assume_unique=True)
            if "full_rss_mb" not in out and lo + c.batch >= c.budget_rows:
                out["full_rss_mb"] = _status("VmRSS")  # RAM at its budget, nothing on disk
        t.settle()  # (the merges the fill left running)
        out["fill_rows_per_s"] = c.rows / (time.perf_counter() - t0)
        st = t.stats()
        out.update(rows=len(t), ram_rows=st["ram_rows"], disk_rows=st["disk_rows"],
                   disk_bytes=st["disk_bytes"], end_rss_mb=_status("VmRSS"),
                   fill_peak_rss_mb=_status("VmHWM"),
                   ram_bytes_per_hot_row=st["bytes_per_row_at_capacity"])  # fmt: skip
        out["ram_bytes_per_cold_row"] = ((out["end_rss_mb"] - out["full_rss_mb"]) * 2**20
                                         / max(out["disk_rows"], 1))  # fmt: skip
        out["budget_mb"] = c.budget_rows * out["ram_bytes_per_hot_row"] / 2**20
        path = os.path.join(root, "base")
        _reset_peak()
        t0 = time.perf_counter()
        m = snapshot.save(t, path, "base")
        s = time.perf_counter() - t0
        out["snapshot_mb_per_s"] = sum(f["bytes"] for f in m["files"].values()) / 2**20 / s
        out["snapshot_seconds"] = s
        out["snapshot_peak_rss_mb"] = _status("VmHWM")
        shutil.rmtree(path)
        record = t._cold.dtype.itemsize + 8  # what the scan reads per cold row
        cold = st["disk_rows"]
        t0 = time.perf_counter()
        evicted = t.shrink()
        s = time.perf_counter() - t0
        out.update(shrink_evicted=evicted, shrink_seconds=s,
                   shrink_mb_per_s=cold * record / 2**20 / s)  # fmt: skip
        t.close()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _zipf_ranks(rng, c: TierBenchConfig, n: int, exponent: float) -> np.ndarray:
    r = rng.zipf(exponent, n * 2)
    r = r[r <= c.zipf_rows][:n]
    return r - 1


def _fill(t, c: TierBenchConfig) -> None:
    for lo in range(0, c.zipf_rows, c.batch):
        t.pull(_keys(lo, min(lo + c.batch, c.zipf_rows)), train=True)


def _timed(t, c: TierBenchConfig, batches: list[np.ndarray]) -> tuple[float, float, float]:
    """(keys/s of pull + push over the batches after five warm-up ones, the shares of those
    keys faulted in from disk and of rows spilled to it meanwhile). A tiered table's merges
    started in the window are waited for inside it: their work counts."""
    for ids in batches[:5]:  # warm-up: the hot set comes into RAM
        t.pull(ids, train=True)
        t.push(ids, _grads(c, len(ids)), assume_unique=True)
    before = t.stats()
    keys = 0
    t0 = time.perf_counter()
    for ids in batches[5:]:
        t.pull(ids, train=True)
        t.push(ids, _grads(c, len(ids)), assume_unique=True)
        keys += len(ids)
    t.settle()
    seconds, after = time.perf_counter() - t0, t.stats()
    moved = [(after.get(k, 0) - before.get(k, 0)) / keys for k in ("faulted_in", "spilled")]
    return keys / seconds, *moved


def _read_us(cold, keys: np.ndarray) -> dict[int, float]:
    """Microseconds a key of reading ``keys`` (all on disk, files in the page cache) from
    the runs alone, on one thread and on the tier's threads: the floor of a key from disk."""
    out = {}
    for threads in sorted({1, cold.read_threads}):
        saved, cold.read_threads = cold.read_threads, threads
        try:
            cold.get(keys)  # (its blocks come into the page cache, the kernels compile)
            t0 = time.perf_counter()
            cold.get(keys)
            out[threads] = (time.perf_counter() - t0) / len(keys) * 1e6
        finally:
            cold.read_threads = saved
    return out


def throughput_phase(c: TierBenchConfig) -> dict:
    """pull + push of the same Zipf batches on a tiered table, one per ``zipf_cases``
    (exponent, RAM budget), and on an all-RAM table just before and just after it (the
    mean is the case's reference: this VM's speed moves between minutes), all holding
    ``zipf_rows`` rows; then a batch of keys all on disk."""
    root = tempfile.mkdtemp(prefix="tier-bench-", dir=c.disk_dir or None)
    try:
        ram = hs.EmbeddingTable(_cfg(c))
        _fill(ram, c)
        out: dict = {"cases": []}
        keys = _keys(0, c.zipf_rows)
        for exponent, share in c.zipf_cases:
            rng = np.random.default_rng(0)
            batches = [np.unique(keys[_zipf_ranks(rng, c, c.zipf_batch, exponent)])
                       for _ in range(c.zipf_batches + 5)]  # fmt: skip
            tier = hs.DiskTier(root, max_rows=int(share * c.zipf_rows))
            t = hs.EmbeddingTable(_cfg(c), tier=tier)
            _fill(t, c)
            t.settle()  # (the merges the fill left running: their own time is the fill's)
            ram_before = _timed(ram, c, batches)[0]
            keys_per_s, faulted, spilled = _timed(t, c, batches)
            ram_keys_per_s = (ram_before + _timed(ram, c, batches)[0]) / 2
            case = {"exponent": exponent, "share": share, "keys_per_s": keys_per_s,
                    "ram_keys_per_s": ram_keys_per_s, "faulted": faulted, "spilled": spilled,
                    "unique": float(np.mean([len(b) for b in batches])),
                    "ratio": keys_per_s / ram_keys_per_s}  # fmt: skip
            # What a key from disk added: the time over the all-RAM table's, per such key
            extra = 1 / keys_per_s - 1 / ram_keys_per_s
            case["us_per_disk_key"] = extra / max(faulted, 1e-9) * 1e6
            out["cases"].append(case)
            if "cold_batch_ms" not in out:  # a batch of keys all on disk, ranks mid-way
                cold = _keys(c.zipf_rows // 2, c.zipf_rows // 2 + c.cold_batch)
                out["cold_batch_on_disk"] = float(t._cold.get(cold)[0].mean())
                out["read_us"] = _read_us(t._cold, cold)
                t0 = time.perf_counter()
                t.pull(cold, train=True)
                t.push(cold, _grads(c, len(cold)), assume_unique=True)
                out["cold_batch_ms"] = (time.perf_counter() - t0) * 1e3
                t0 = time.perf_counter()
                ram.pull(cold, train=True)
                ram.push(cold, _grads(c, len(cold)), assume_unique=True)
                out["cold_batch_ram_ms"] = (time.perf_counter() - t0) * 1e3
            t.close()
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


_E2E_FIELDS = ("partition", "progressive_auc", "train_auc", "logloss", "table_rows",
               "admitted", "evicted")  # fmt: skip


# Runs a command and prints its peak RSS (KB). A process's peak RSS counts the memory of the
# process it was forked from (Linux keeps the high-water mark across exec), so the trainer
# is started by this small launcher, not by the benchmark process that generated the data.
_LAUNCH = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
           "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN)"
           ".ru_maxrss)")  # fmt: skip


def _run_trainer(args: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one train_stream.py process."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "train_stream.py")  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LAUNCH, sys.executable, script, *args],
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"train_stream.py {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0, int(proc.stdout.split()[-1]) / 1024


def e2e_phase(c: TierBenchConfig) -> dict:
    """The same stream trained all in RAM and with the tier (staleness 0, checkpoints on):
    per-partition metrics compared, peak RSS and run time of each trainer process."""
    from jaxstream.data.synthetic import StreamConfig, generate

    root = tempfile.mkdtemp(prefix="tier-e2e-", dir=c.disk_dir or None)
    try:
        data = os.path.join(root, "data")
        generate(data, StreamConfig(hours=c.e2e_hours, rows_per_hour=c.e2e_rows_per_hour,
                                    max_vocab=c.e2e_max_vocab, zipf=c.e2e_zipf))  # fmt: skip
        common = [f"--data_root={data}", "--staleness=0", "--admission=always",
                  "--eviction=", "--progress=false", "--table_capacity=1024"]  # fmt: skip
        out: dict = {}
        disk = os.path.join(root, "disk")
        runs = {
            "ram": [],
            "tiered": [f"--store_memory_mb={c.e2e_memory_mb}", f"--store_disk_dir={disk}"],
        }
        lines = {}
        for name, extra in runs.items():
            work = os.path.join(root, name)
            seconds, rss = _run_trainer([*common, f"--workdir={work}", *extra])
            with open(os.path.join(work, "metrics.jsonl")) as f:
                records = [json.loads(x) for x in f]
            lines[name] = [{k: r[k] for k in _E2E_FIELDS} for r in records]
            out[name] = {"seconds": seconds, "peak_rss_mb": rss,
                         "table_mb": records[-1]["table_bytes"] / 2**20,
                         "disk_rows": records[-1].get("disk_rows", 0),
                         "rows": records[-1]["table_rows"],
                         "examples": sum(r["examples"] for r in records)}  # fmt: skip
        out["identical"] = lines["ram"] == lines["tiered"]
        out["partitions"] = len(lines["ram"])
        out["auc"] = [x["progressive_auc"] for x in lines["ram"]]
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def projection(c: TierBenchConfig, r: dict[str, float]) -> str:
    """Store hosts for 10^9..10^11 features, all in RAM and with the tier holding all but
    ``hot_fraction`` of the rows, from the bytes per row measured above."""
    host = c.shard_ram_gb * 2**30
    hot, cold = r["ram_bytes_per_hot_row"], max(r["ram_bytes_per_cold_row"], 0.0)
    disk = r["disk_bytes"] / max(r["disk_rows"], 1)
    lines = [
        f"Hosts of {c.shard_ram_gb} GB of RAM; all in RAM at {hot:.1f} bytes per feature "
        f"(dim {c.dim}, AdaGrad, statistics, index); with the tier, {c.hot_fraction:.0%} of "
        f"the rows in RAM and the rest at {cold:.1f} bytes of RAM and {disk:.0f} bytes of "
        "disk each, as measured above.",
        "",
        "| features | RAM, all in RAM | hosts | RAM with the tier | disk with the tier "
        "| hosts with the tier (RAM-bound) |",
        "|---|---|---|---|---|---|",
    ]
    for e in (9, 10, 11):
        n = 10**e
        ram = n * hot
        tier_ram = n * (c.hot_fraction * hot + (1 - c.hot_fraction) * cold)
        tier_disk = n * (1 - c.hot_fraction) * disk
        lines.append(f"| 10^{e} | {ram / 2**40:,.2f} TB | {-(-ram // host):,.0f} | "
                     f"{tier_ram / 2**40:,.2f} TB | {tier_disk / 2**40:,.1f} TB | "
                     f"{-(-tier_ram // host):,.0f} |")  # fmt: skip
    return "\n".join(lines)


def e2e_markdown(c: TierBenchConfig, e: dict) -> str:
    ram, tier = e["ram"], e["tiered"]
    above = ram["table_mb"] - c.e2e_memory_mb
    cut = ram["peak_rss_mb"] - tier["peak_rss_mb"]
    return "\n".join([
        f"**End to end.** `train_stream.py` on a generated stream of {c.e2e_hours} hours x "
        f"{c.e2e_rows_per_hour:,} examples (vocabularies up to {c.e2e_max_vocab:,}, Zipf "
        f"{c.e2e_zipf}; admission always, no eviction, staleness 0, a checkpoint per hour), "
        f"all in RAM and with `--store_memory_mb={c.e2e_memory_mb:g}`. Per-partition metrics "
        f"(AUC, log loss, rows, admitted): **{'identical' if e['identical'] else 'DIFFERENT'}** "
        f"over {e['partitions']} partitions.",
        "",
        "| run | table rows | table in RAM | rows on disk | peak RSS | run time |",
        "|---|---|---|---|---|---|",
        f"| all in RAM | {ram['rows']:,} | {ram['table_mb']:,.0f} MB | 0 | "
        f"{ram['peak_rss_mb']:,.0f} MB | {ram['seconds']:.0f} s |",
        f"| `--store_memory_mb={c.e2e_memory_mb:g}` | {tier['rows']:,} | {tier['table_mb']:,.0f} MB"
        f" | {tier['disk_rows']:,} | {tier['peak_rss_mb']:,.0f} MB | {tier['seconds']:.0f} s |",
        "",
        f"Peak RSS cut by {cut:,.0f} MB: {cut / above:.0%} of the table's size above the "
        f"budget ({above:,.0f} MB); the run took {tier['seconds'] / ram['seconds']:.2f}x as long.",
    ])  # fmt: skip


def markdown(c: TierBenchConfig, rss: dict[str, float], tp: dict[str, float]) -> str:
    fixed = rss["base_rss_mb"]
    over = rss["fill_peak_rss_mb"] - fixed - rss["budget_mb"]
    return "\n".join([
        f"**RSS against the budget.** A table of {rss['rows']:,} rows (dim {c.dim}, "
        f"AdaGrad), filled by training pulls and pushes of {c.batch:,} new keys, with a RAM "
        f"budget of {c.budget_rows:,} rows ({rss['budget_mb']:,.0f} MB at "
        f"{rss['ram_bytes_per_hot_row']:.1f} bytes per row). The process before the table: "
        f"{fixed:,.0f} MB (Python, numpy, numba, jit-compiled kernels).",
        "",
        "| | MB |",
        "|---|---|",
        f"| RSS with RAM at its budget, nothing on disk | {rss['full_rss_mb']:,.0f} |",
        f"| RSS at the end ({rss['disk_rows']:,} rows on disk, {rss['ram_rows']:,} in RAM) "
        f"| {rss['end_rss_mb']:,.0f} |",
        f"| peak RSS while filling | {rss['fill_peak_rss_mb']:,.0f} |",
        f"| peak less the process before the table and the budget | {over:,.0f} |",
        f"| disk | {rss['disk_bytes'] / 2**20:,.0f} |",
        "",
        f"RAM per cold feature: **{rss['ram_bytes_per_cold_row']:.1f} bytes** (RSS growth "
        f"from RAM at budget to the end, over the rows on disk: the key filter, each run's "
        f"bloom filter, fence keys and dead bits, and what the allocator holds). Fill: "
        f"{rss['fill_rows_per_s']:,.0f} rows/s (admission, pushes, spills and the runs' "
        "merges).",
        "",
        f"**Over the disk tier.** Base snapshot of the whole table: "
        f"{rss['snapshot_mb_per_s']:,.0f} MB/s ({rss['snapshot_seconds']:.1f} s; the "
        f"process's peak RSS while it ran: {rss['snapshot_peak_rss_mb']:,.0f} MB, against "
        f"{rss['end_rss_mb']:,.0f} MB before: the rows stream to the files). Shrink over "
        f"both tiers (deleting {rss['shrink_evicted']:,} rows, "
        f"the tenth scored below its threshold): {rss['shrink_mb_per_s']:,.0f} MB/s of cold "
        f"records scanned ({rss['shrink_seconds']:.1f} s).",
        "",
        f"**Throughput on a Zipf stream.** {c.zipf_rows:,} rows; batches of "
        f"{c.zipf_batch:,} Zipf draws over them, training pull + push of the same "
        f"{c.zipf_batches} batches on a tiered table and on an all-RAM table just before "
        "and just after it (the mean of the two is the case's all-RAM figure: this VM's "
        "speed moves by tens of percent between minutes); the tiered table's time includes "
        "waiting, at the end, for the merges it started. \"From disk\": the "
        "share of the keys pulled that were faulted in; \"spilled\": the rows written to "
        "disk meanwhile, as a share of the same keys (the spills' merges come on top). The "
        f"tiered tables read cold keys with {_READ_THREADS} threads "
        "(`DiskTier.read_threads`' default here), the all-RAM table pulls with one.",
        "",
        "| Zipf exponent | distinct keys per batch | RAM budget | from disk | spilled "
        "| keys/s | all-RAM keys/s | tiered vs all-RAM | time added per key from disk |",
        "|---|---|---|---|---|---|---|---|---|",
        *(f"| {x['exponent']} | {x['unique']:,.0f} | {x['share']:.0%} of the rows | "
          f"{x['faulted']:.2%} | {x['spilled']:.2%} | {x['keys_per_s']:,.0f} | "
          f"{x['ram_keys_per_s']:,.0f} | "
          f"**{x['ratio']:.2f}x** | {x['us_per_disk_key']:.2f} us |" for x in tp["cases"]),
        "",
        f"A batch of {c.cold_batch:,} keys all on disk (pull + push): "
        f"{tp['cold_batch_ms']:.1f} ms, against {tp['cold_batch_ram_ms']:.1f} ms for the same "
        "keys in RAM. Reading those keys from the run files alone (files in the page cache): "
        + ", ".join(f"{us:.2f} us a key on {n} thread{'s' * (int(n) > 1)}"
                    for n, us in tp["read_us"].items())  # fmt: skip
        + "; a key from disk costs at least its read, and the tiered table reaches half the "
        "all-RAM rate only while (share from disk) x (time added per key from disk) stays "
        "under the all-RAM time per key.",
        "",
        projection(c, rss),
    ])  # fmt: skip
