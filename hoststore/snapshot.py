"""Snapshots of a table on disk: base, delta (changes and deletions) and serving.

A snapshot is a directory of .npy column files and a ``manifest.json`` that commits them:

- ``base``: every row (weights, optimizer state, statistics), the pending admission
  counters, the clock and the running totals.
- ``delta``: the rows changed since the previous snapshot, the keys evicted since then, and
  the pending counters (bounded by ``max_pending``, so stored whole). Loading a base and its
  deltas in order reproduces the live table exactly; the manifest names its parent and a
  load refuses a broken chain.
- ``serving``: keys and weights only, rows filtered by a show/click score, optionally
  float16.

Every file is written under a temporary name, fsynced and renamed; the manifest, holding
the sha256 and size of every file, is written last the same way, so a snapshot either
exists whole or not at all. Loading checks every checksum first and raises
:class:`SnapshotError` naming the file on any mismatch: a damaged snapshot is never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import numpy as np

from hoststore._hashing import shard_of
from hoststore._rows import STAT_COLUMNS
from hoststore.config import TableConfig
from hoststore.disk_tier import DiskTier
from hoststore.sharded import ShardedTable
from hoststore.table import EmbeddingTable, top_rows

FORMAT = 1
MANIFEST = "manifest.json"
KINDS = ("base", "delta", "serving", "cache")


class SnapshotError(RuntimeError):
    pass


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_HEADER_BYTES = 256  # a .npy header (format 1.0) of this fixed size, padded with spaces


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The .npy header np.save would write, padded to a fixed size, so that a file whose
    row count is known only at its end can get it in place."""
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
                 "shape": tuple(shape)})  # fmt: skip
    pad = _HEADER_BYTES - len(np.lib.format.MAGIC_PREFIX) - 2 - 2 - len(text) - 1
    if pad < 0:
        raise ValueError(f"a .npy header for {dtype} {shape} does not fit {_HEADER_BYTES} bytes")
    body = (text + " " * pad + "\n").encode("latin1")
    return np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + len(body).to_bytes(2, "little") + body


@contextlib.contextmanager
def _naming(path: str):
    """An OSError of a write without a file name (a full disk) names ``path``."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise OSError(e.errno, e.strerror, path) from e
        raise


class _NpyWriter:
    """A ``.npy`` file written a chunk at a time (a base of a table bigger than RAM is never
    gathered whole), committed atomically. With ``rows`` known it is hashed as written and
    the count checked; without, the header gets the count at the end and the file is
    hashed by reading it back (sequential, from the page cache)."""

    def __init__(self, path: str, dtype: np.dtype, row_shape: tuple[int, ...],
                 rows: int | None):  # fmt: skip
        self.path, self.dtype, self.rows, self.row_shape = path, np.dtype(dtype), rows, row_shape
        self._tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        self._f = open(self._tmp, "w+b")
        self._hash = hashlib.sha256()
        self._written = 0
        self._put(_npy_header(self.dtype, (rows or 0, *row_shape)))

    def _put(self, data) -> None:
        with _naming(self.path):
            self._f.write(data)
        if self.rows is not None:
            self._hash.update(data)

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, self.dtype)
        self._written += len(arr)
        if arr.size:
            self._put(memoryview(arr.reshape(-1).view(np.uint8)))

    def commit(self) -> dict:
        with _naming(self.path):
            return self._commit()

    def _commit(self) -> dict:
        if self.rows is None:  # the count goes into the header, then the file is hashed
            self._f.seek(0)
            self._f.write(_npy_header(self.dtype, (self._written, *self.row_shape)))
            self._f.flush()
            self._f.seek(0)
            while block := self._f.read(1 << 22):
                self._hash.update(block)
        elif self._written != self.rows:  # the cut's count and its rows disagree: a bug
            raise SnapshotError(f"{self.path}: {self._written} rows written, {self.rows} cut")
        self._f.flush()
        os.fsync(self._f.fileno())
        size = os.fstat(self._f.fileno()).st_size
        self._f.close()
        os.replace(self._tmp, self.path)
        return {"sha256": self._hash.hexdigest(), "bytes": size,
                "shape": [self._written, *self.row_shape], "dtype": self.dtype.str}  # fmt: skip

    def abort(self) -> None:
        self._f.close()
        with contextlib.suppress(OSError):
            os.remove(self._tmp)


def _stream_rows(path: str, states: list[dict], layout: dict) -> dict[str, dict]:
    """Writes the cuts' rows, shard after shard and chunk after chunk, into one file per
    column; returns the files' manifest entries. A thread writes and hashes (both release
    the GIL) while this one reads the next chunk (a disk-tier scan is Python-bound)."""
    counts = [st["rows"].count for st in states]
    total = None if None in counts else sum(counts)  # None: known once written
    writers = {c: _NpyWriter(os.path.join(path, f"rows.{c}.npy"), dt, shape, total)
               for c, (dt, shape) in layout.items()}  # fmt: skip
    todo: queue.Queue = queue.Queue(maxsize=2)
    failed: list[BaseException] = []

    def write() -> None:
        while (chunk := todo.get()) is not None:
            if failed:
                continue  # drain: the reader must never block on a full queue
            try:
                for c, w in writers.items():
                    w.write(chunk[c])
            except BaseException as e:  # noqa: BLE001 - re-raised by the reader
                failed.append(e)

    writer = threading.Thread(target=write, name="snapshot-writer", daemon=True)
    writer.start()
    try:
        try:
            for st in states:
                with st["rows"] as chunks:
                    for chunk in chunks:
                        if failed:
                            break
                        todo.put(chunk)
        finally:
            todo.put(None)
            writer.join()
        if failed:
            raise failed[0]
        return {f"rows.{c}.npy": w.commit() for c, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _shards(table) -> list[EmbeddingTable]:
    return table.shards if isinstance(table, ShardedTable) else [table]


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def table_signature(config: TableConfig) -> dict[str, Any]:
    """What a snapshot's reader must agree on."""
    state = config.optimizer.init(1, config.dim)
    return {
        "name": config.name,
        "dim": config.dim,
        "optimizer": config.optimizer.name,
        "state": [[list(s.shape[1:]), s.dtype.str] for s in state],
    }


def save(
    table: EmbeddingTable | ShardedTable,
    path: str,
    kind: str,
    parent: dict | None = None,
    *,
    min_score: float | None = None,
    float16: bool = False,
    cache_fraction: float = 0.1,
    max_unseen: int | None = None,
    delta_threshold: float | None = None,
) -> dict:
    """Writes a snapshot of ``table`` to the new directory ``path``; returns its manifest.

    A delta needs the manifest of the snapshot it follows (``parent``) and holds what
    changed after the parent's cut, whatever other snapshots were taken in between; each
    shard is cut at one instant, under its lock, while pulls and pushes continue around it.
    ``serving`` holds weights only, of the rows Paddle's xbox save keeps: score at least
    ``min_score`` (``base_threshold``), unseen at most ``max_unseen`` ticks
    (``delta_keep_days``), delta score at least ``delta_threshold`` (``delta_threshold``;
    it restarts at 0 for the rows emitted, so the next such export is a serving delta:
    Paddle's xbox base is ``delta_threshold=0``). ``cache`` (``save_cache_model``): the
    ``cache_fraction`` of rows with the most (decayed) shows, ties to the smaller key.
    """
    if kind not in KINDS:
        raise ValueError(f"snapshot kind must be one of {KINDS}, got {kind!r}")
    filters = {"min_score": min_score, "max_unseen": max_unseen,
               "delta_threshold": delta_threshold}  # fmt: skip
    if kind != "serving" and (max_unseen is not None or delta_threshold is not None):
        raise ValueError("max_unseen and delta_threshold filter serving exports only")
    if kind == "delta" and parent is None:
        raise ValueError("a delta snapshot needs its parent's manifest")
    if os.path.exists(os.path.join(path, MANIFEST)):
        raise SnapshotError(f"{path} already holds a committed snapshot")
    t0 = time.perf_counter()
    os.makedirs(path, exist_ok=True)
    shards = _shards(table)
    cols: dict[str, np.ndarray] = {}
    cut_seconds = 0.0  # the longest a shard's lock was held (writes wait that long)
    if kind == "serving":  # streamed: a shard's rows are read under its lock, a chunk at a time
        states = [{"rows": s.serving_rows(min_score, max_unseen, delta_threshold)}
                  for s in shards]  # fmt: skip
        layout = {"key": (np.int64, ()),
                  "emb": (np.float16 if float16 else np.float32, (table.config.dim,))}  # fmt: skip
        try:
            streamed = _stream_rows(path, states, layout)
        finally:
            for st in states:
                st["rows"].close()
    elif kind == "cache":
        if not 0.0 <= cache_fraction <= 1.0:
            raise ValueError(f"cache_fraction must be in [0, 1], got {cache_fraction}")
        top = top_rows(shards, cache_fraction)
        cols["rows.key"] = top["key"]
        cols["rows.emb"] = top["emb"].astype(np.float16 if float16 else np.float32)
    else:
        since = [None] * len(shards)
        if kind == "delta":  # each shard continues its own cut; another layout: everything
            cuts = [p.get("generation") for p in parent.get("shards", [])]
            ok = len(cuts) == len(shards) and None not in cuts
            since = cuts if ok else [-1] * len(shards)
        states = []
        try:  # every shard is cut, then each one's rows stream to the files
            for s, c in zip(shards, since, strict=True):
                states.append(s.snapshot_stream(c))
            streamed = _stream_rows(path, states, shards[0].row_layout())
        finally:
            for st in states:
                st["rows"].close()
        cut_seconds = max(st["held"]["seconds"] for st in states)
        pending = _concat([st["pending"] for st in states])
        cols.update({f"pending.{k}": v for k, v in pending.items()})
        if kind == "delta":
            cols["deleted.key"] = np.concatenate([st["deleted"] for st in states])
        scalars = [st["scalars"] for st in states]
    files = {} if kind == "cache" else streamed
    for name, arr in cols.items():
        data = _npy_bytes(arr)
        fname = f"{name}.npy"
        _write_atomic(os.path.join(path, fname), data)
        files[fname] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
                        "shape": list(arr.shape), "dtype": arr.dtype.str}  # fmt: skip
    manifest = {
        "format": FORMAT,
        "id": uuid.uuid4().hex,
        "kind": kind,
        "parent": None if parent is None else parent["id"],
        "created_unix": time.time(),
        "table": table_signature(table.config),
        "shards": scalars if kind in ("base", "delta") else [s.export_scalars() for s in shards],
        "rows": int(files["rows.key.npy"]["shape"][0]),
        **({"filters": filters} if kind == "serving" else {}),
        "deleted": int(len(cols.get("deleted.key", ()))),
        "files": files,
    }
    manifest["sha256"] = _manifest_sha256(manifest)
    _write_atomic(os.path.join(path, MANIFEST), json.dumps(manifest, indent=1).encode())
    _fsync_dir(path)
    manifest["write_seconds"] = time.perf_counter() - t0
    manifest["cut_seconds"] = cut_seconds
    return manifest


def _manifest_sha256(m: dict) -> str:
    """Of the manifest's own body: its scalars (clock, totals, parent) are checked too."""
    body = {k: v for k, v in m.items() if k not in ("sha256", "write_seconds", "cut_seconds")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def read_manifest(path: str) -> dict:
    mpath = os.path.join(path, MANIFEST)
    if not os.path.exists(mpath):
        raise SnapshotError(f"{path}: no {MANIFEST} (the snapshot was never committed)")
    try:
        with open(mpath) as f:
            m = json.load(f)
    except (OSError, ValueError) as e:
        raise SnapshotError(f"{mpath}: unreadable manifest: {e}") from None
    if m.get("format") != FORMAT or m.get("kind") not in KINDS:
        raise SnapshotError(f"{mpath}: unknown format {m.get('format')} / kind {m.get('kind')}")
    if "sha256" in m and m["sha256"] != _manifest_sha256(m):
        raise SnapshotError(f"{mpath}: sha256 mismatch (the manifest was altered)")
    return m


def read_columns(
    path: str, manifest: dict | None = None, only: tuple[str, ...] | None = None
) -> dict[str, np.ndarray]:
    """The files of a snapshot (all, or those named in ``only``), each checked against the
    manifest's size and sha256."""
    m = manifest or read_manifest(path)
    out = {}
    for fname, meta in m["files"].items():
        if only is not None and fname[: -len(".npy")] not in only:
            continue
        fpath = os.path.join(path, fname)
        try:
            with open(fpath, "rb") as f:
                data = f.read()
        except OSError as e:
            raise SnapshotError(f"{fpath}: cannot read: {e}") from None
        if len(data) != meta["bytes"]:
            raise SnapshotError(f"{fpath}: {len(data)} bytes, manifest says {meta['bytes']} "
                                "(truncated or altered)")  # fmt: skip
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise SnapshotError(f"{fpath}: sha256 mismatch (the file was altered)")
        out[fname[: -len(".npy")]] = np.load(io.BytesIO(data), allow_pickle=False)
    return out


def _rename_state_columns(rows: dict[str, np.ndarray], names: list[str], path: str) -> dict:
    """Snapshots written before optimizer states had field names call them state_0, ...:
    map them onto this optimizer's names (same count and order)."""
    old = sorted(k for k in rows if k.startswith("state_"))
    if not old:
        return rows
    if len(old) != len(names):
        raise SnapshotError(f"{path}: {len(old)} optimizer state columns, the optimizer has "
                            f"{len(names)} ({', '.join(names)})")  # fmt: skip
    out = {k: v for k, v in rows.items() if not k.startswith("state_")}
    out.update({n: rows[f"state_{i}"] for i, n in enumerate(names)})
    return out


def new_table(
    config: TableConfig, shards: int = 1, tier: DiskTier | None = None
) -> EmbeddingTable | ShardedTable:
    """An empty table: one EmbeddingTable, or a ShardedTable over ``shards`` shards (each
    with its share of the disk ``tier``'s RAM budget, when given)."""
    if shards == 1:
        return EmbeddingTable(config, tier=tier)
    return ShardedTable(config, shards, tier=tier)


def load(
    paths: list[str], config: TableConfig, shards: int = 1, tier: DiskTier | None = None
) -> EmbeddingTable | ShardedTable:
    """A table rebuilt from a base and its deltas, in order, into ``shards`` shards
    (any count: rows are routed by key hash), with a disk ``tier`` when given."""
    if not paths:
        raise ValueError("load needs at least a base snapshot")
    table = new_table(config, shards, tier)
    expect = table_signature(config)
    names = list(_shards(table)[0].state_names)
    prev = None
    for i, path in enumerate(paths):
        m = read_manifest(path)
        want = "base" if i == 0 else "delta"
        if m["kind"] != want:
            raise SnapshotError(f"{path}: expected a {want} snapshot, found {m['kind']}")
        if i and m["parent"] != prev["id"]:
            raise SnapshotError(f"{path}: its parent is {m['parent']}, not the previous "
                                f"snapshot {prev['id']}: the chain is broken")  # fmt: skip
        if m["table"] != expect:
            raise SnapshotError(f"{path}: written for table {m['table']}, not {expect}")
        cols = read_columns(path, m)
        rows = {k[5:]: v for k, v in cols.items() if k.startswith("rows.")}
        pending = {k[8:]: v for k, v in cols.items() if k.startswith("pending.")}
        deleted = cols.get("deleted.key", np.empty(0, np.int64))
        rows = _rename_state_columns(rows, names, path)
        if "updates" in rows:  # written before rows had a delta score: it starts at 0
            del rows["updates"]
            rows["delta_score"] = np.zeros(len(rows["key"]), np.float32)
        _apply(table, rows, deleted, pending, m["shards"])
        prev = m
    return table


def load_chains(
    chains: list[list[str]],
    config: TableConfig,
    shards: int = 1,
    keep: Callable[[np.ndarray], np.ndarray] | None = None,
    totals: bool = True,
    tier: DiskTier | None = None,
) -> EmbeddingTable | ShardedTable:
    """A table rebuilt from several chains, one per part that wrote them (the shards of a
    store), into ``shards`` shards. ``keep(keys) -> mask`` selects the keys to load (a
    shard server loads its own); ``totals=False`` leaves the running totals at zero (so
    that only one of several shards counts them)."""
    if not chains:
        raise ValueError("load needs at least one snapshot chain")
    if len(chains) == 1 and keep is None and totals:
        return load(chains[0], config, shards, tier)
    table = new_table(config, shards, tier)
    pending, scalars = [], []
    for chain in chains:
        # Each chain is rebuilt in a table of its own (with the tier, within its budget),
        # and its rows stream into the new table a chunk at a time: a table bigger than RAM
        # is never gathered whole. Until the last call, every call gets this chain's scalars
        # in the place of each chain's (the last call sets them all): the rows' generations
        # and the shard routing are what the final scalars give.
        full = load(chain, config, tier=tier)
        try:
            p = full.export_pending()
            pending.append(p if keep is None else {k: v[keep(p["key"])] for k, v in p.items()})
            scalars.append(full.export_scalars())
            no_pending, placeholder = {k: v[:0] for k, v in p.items()}, [scalars[-1]] * len(chains)
            with full.snapshot_stream()["rows"] as chunks:
                for r in chunks:
                    if keep is not None:
                        r = {k: v[keep(r["key"])] for k, v in r.items()}
                    _apply(table, r, _NO_KEYS, no_pending, placeholder)
        finally:
            full.close()
    if not totals:
        scalars = [{**s, **dict.fromkeys(_TOTALS, 0)} for s in scalars]
    _apply(table, {"key": _NO_KEYS}, _NO_KEYS, _concat(pending), scalars)
    return table


_NO_KEYS = np.empty(0, np.int64)


_TOTALS = ("admitted", "evicted", "rejected", "expired_pending", "displaced_pending",
           "train_pulls")  # fmt: skip


def _apply(table, rows, deleted, pending, scalars) -> None:
    targets = _shards(table)
    if len(targets) == 1:
        merged = dict(scalars[0])
        for k in _TOTALS:
            merged[k] = sum(s.get(k, 0) for s in scalars)
        merged["generation"] = max(s.get("generation", 0) for s in scalars)
        targets[0].apply_snapshot(rows, deleted, pending, merged, changed=len(scalars) > 1)
        return
    n = len(targets)
    r_sh, d_sh, p_sh = shard_of(rows["key"], n), shard_of(deleted, n), shard_of(pending["key"], n)
    same = len(scalars) == n
    for i, t in enumerate(targets):
        sc = dict(scalars[i] if same else scalars[0])
        if not same:  # resharded: totals are kept once, on shard 0
            for k in _TOTALS:
                sc[k] = sum(s.get(k, 0) for s in scalars) if i == 0 else 0
        if not same:
            sc["generation"] = max(s.get("generation", 0) for s in scalars)
        t.apply_snapshot({k: v[r_sh == i] for k, v in rows.items()}, deleted[d_sh == i],
                         {k: v[p_sh == i] for k, v in pending.items()}, sc,
                         changed=not same)  # fmt: skip


_SERVING_STATS = ("rows.show", "rows.click", "rows.last_seen", "pending.key", "pending.show",
                  "pending.click", "pending.last_seen")  # fmt: skip


def read_weights(path: str, with_counts: bool = False) -> tuple:
    """What serving applies of one base or delta, as ``EmbeddingTable.apply_snapshot``
    arguments: keys, weights and deleted keys (no optimizer state; checksums verified).
    ``with_counts`` (a CVM model) also takes the rows' and pending keys' show/click and
    the clock, so a pull reads the counters the trainer read."""
    m = read_manifest(path)
    cols = read_columns(path, m, only=("rows.key", "rows.emb", "deleted.key")
                       + (_SERVING_STATS if with_counts else ()))  # fmt: skip
    n = len(cols["rows.key"])
    rows = {c: np.zeros(n, np.int32) for c in STAT_COLUMNS}
    rows.update(key=cols["rows.key"], emb=cols["rows.emb"])
    pending = {"key": np.empty(0, np.int64), "show": np.empty(0, np.uint16),
               "click": np.empty(0, np.uint16), "last_seen": np.empty(0, np.int32)}  # fmt: skip
    scalars = dict.fromkeys(("clock", *_TOTALS), 0)
    if with_counts:
        for c in ("show", "click", "last_seen"):
            rows[c] = cols[f"rows.{c}"]
        pending = {c: cols[f"pending.{c}"] for c in pending}
        scalars["clock"] = m["shards"][0]["clock"]
    return rows, cols.get("deleted.key", np.empty(0, np.int64)), pending, scalars


def load_serving(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys, weights) of a serving or cache snapshot, checksums verified."""
    m = read_manifest(path)
    if m["kind"] not in ("serving", "cache"):
        raise SnapshotError(f"{path}: not a serving snapshot ({m['kind']})")
    cols = read_columns(path, m)
    return cols["rows.key"], cols["rows.emb"]


def compact(paths: list[str], out: str, config: TableConfig | None = None) -> dict:
    """Folds a base and its deltas into one new base at ``out`` (offline). Without a
    config, the table's signature in the manifests is enough."""
    if config is None:
        sig = read_manifest(paths[0])["table"]
        from hoststore import optimizers

        name = sig["optimizer"]
        config = TableConfig(sig["name"], sig["dim"], optimizer=optimizers.from_name(name, 0.0))
        if table_signature(config) != sig:
            raise SnapshotError(f"cannot rebuild the table of {paths[0]} from its manifest")
    return save(load(paths, config), out, "base")
