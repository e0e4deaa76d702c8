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

import hashlib
import io
import json
import os
import time
import uuid
from typing import Any

import numpy as np

from hoststore.config import TableConfig
from hoststore.sharded import ShardedTable
from hoststore.table import EmbeddingTable

FORMAT = 1
MANIFEST = "manifest.json"
KINDS = ("base", "delta", "serving")


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
) -> dict:
    """Writes a snapshot of ``table`` to the new directory ``path``; returns its manifest.

    A delta needs the manifest of the snapshot it follows (``parent``). After a base or a
    delta is committed, the table's change markers and eviction record are cleared.
    """
    if kind not in KINDS:
        raise ValueError(f"snapshot kind must be one of {KINDS}, got {kind!r}")
    if kind == "delta" and parent is None:
        raise ValueError("a delta snapshot needs its parent's manifest")
    if os.path.exists(os.path.join(path, MANIFEST)):
        raise SnapshotError(f"{path} already holds a committed snapshot")
    t0 = time.perf_counter()
    os.makedirs(path, exist_ok=True)
    shards = _shards(table)
    cols: dict[str, np.ndarray] = {}
    if kind == "serving":
        rows = _concat([s.export_rows() for s in shards])
        keep = np.ones(len(rows["key"]), bool)
        if min_score is not None:
            keep = np.concatenate([s.scores(s.live_rows()) for s in shards]) >= min_score
        cols["rows.key"] = rows["key"][keep]
        cols["rows.emb"] = rows["emb"][keep].astype(np.float16 if float16 else np.float32)
    else:
        rows = _concat([s.export_rows(changed_only=kind == "delta") for s in shards])
        cols.update({f"rows.{k}": v for k, v in rows.items()})
        pending = _concat([s.export_pending() for s in shards])
        cols.update({f"pending.{k}": v for k, v in pending.items()})
        if kind == "delta":
            cols["deleted.key"] = np.concatenate([s.evicted_keys() for s in shards])
    files = {}
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
        "shards": [s.export_scalars() for s in shards],
        "rows": int(len(cols["rows.key"])),
        "deleted": int(len(cols.get("deleted.key", ()))),
        "files": files,
    }
    _write_atomic(os.path.join(path, MANIFEST), json.dumps(manifest, indent=1).encode())
    _fsync_dir(path)
    if kind != "serving":
        for s in shards:
            s.mark_snapshot()
    manifest["write_seconds"] = time.perf_counter() - t0
    return manifest


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


def load(paths: list[str], config: TableConfig, shards: int = 1) -> EmbeddingTable | ShardedTable:
    """A table rebuilt from a base and its deltas, in order, into ``shards`` shards
    (any count: rows are routed by key hash)."""
    if not paths:
        raise ValueError("load needs at least a base snapshot")
    table = EmbeddingTable(config) if shards == 1 else ShardedTable(config, shards)
    expect = table_signature(config)
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
        _apply(table, rows, deleted, pending, m["shards"])
        prev = m
    return table


def _apply(table, rows, deleted, pending, scalars) -> None:
    targets = _shards(table)
    if len(targets) == 1:
        merged = dict(scalars[0])
        for k in ("admitted", "evicted", "rejected", "expired_pending", "train_pulls"):
            merged[k] = sum(s[k] for s in scalars)
        targets[0].apply_snapshot(rows, deleted, pending, merged)
        return
    from hoststore.hashing import shard_of

    n = len(targets)
    r_sh, d_sh, p_sh = shard_of(rows["key"], n), shard_of(deleted, n), shard_of(pending["key"], n)
    same = len(scalars) == n
    for i, t in enumerate(targets):
        sc = dict(scalars[i] if same else scalars[0])
        if not same:  # resharded: totals are kept once, on shard 0
            for k in ("admitted", "evicted", "rejected", "expired_pending", "train_pulls"):
                sc[k] = sum(s[k] for s in scalars) if i == 0 else 0
        t.apply_snapshot({k: v[r_sh == i] for k, v in rows.items()}, deleted[d_sh == i],
                         {k: v[p_sh == i] for k, v in pending.items()}, sc)  # fmt: skip


def load_serving(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(keys, weights) of a serving snapshot, checksums verified."""
    m = read_manifest(path)
    if m["kind"] != "serving":
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
