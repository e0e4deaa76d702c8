"""ShardedStore: the store interface over shard servers.

Each request is split by key hash (:func:`hoststore.shard_of`, the servers' routing), sent
to the shards in parallel with a deadline, and reassembled in the caller's order. Only
idempotent calls are retried (read-only pulls, stats, table creation, loads); a shard that
cannot be reached is an error naming its address.

Fencing: a client that tagged a table (``set_tag``) or loaded it sends that tag with every
call that reads or changes rows; once another client has loaded or tagged the table, the
shards refuse those calls (FAILED_PRECONDITION, naming both tags): two trainers pointed at
the same shards stop instead of training each other's rows. Such a client's ``shrink`` and
``advance_clock`` act on its tagged tables only (a client that tagged none: on all of them).

Snapshots: the servers write under their ``--snapshot_root``. A client that sees that root on
a shared filesystem says where (``snapshot_root=``) and passes its own paths under it; one
that does not passes paths relative to the servers' root.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import numpy as np

from hoststore import device_pass
from hoststore._checks import check_ids, check_per_id, check_push
from hoststore.config import TableConfig, config_from_json, config_to_json
from hoststore.rpc import paths
from hoststore.rpc.channel import FENCE_HEADER, grpc_options
from hoststore.rpc.proto import store_pb2, store_pb2_grpc
from hoststore.sharded import merge_shard_stats, split_by_shard
from hoststore.store import Saved, StoreError
from hoststore.table import COUNT_COLUMNS

_RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Calls that read or change a table's rows: refused by a shard once another client took a
# table this client tagged (loaded or tagged it since).
_FENCED = frozenset({"Pull", "Push", "Shrink", "AdvanceClock", "Snapshot", "SetTag",
                     "BeginPass", "EndPass"})  # fmt: skip


class InvalidRequest(StoreError, ValueError):
    """A shard refused a call as invalid (INVALID_ARGUMENT): a ValueError, as in process."""


class ShardedStore:
    """The :class:`hoststore.Store` interface over shard servers at ``addresses``."""

    def __init__(
        self,
        addresses: list[str],
        *,
        token: str | None = None,
        root_certificates: bytes | None = None,
        private_key: bytes | None = None,
        certificate_chain: bytes | None = None,
        snapshot_root: str | None = None,
        timeout: float = 30.0,
        retries: int = 2,
    ):
        if not addresses:
            raise ValueError("ShardedStore needs at least one shard address")
        if token is not None and not token.strip():  # (as the server: blank is not none)
            raise ValueError("a blank token; pass token=None to connect without one")
        self.addresses = list(addresses)
        self.timeout = timeout
        self.retries = retries
        self.snapshot_root = snapshot_root
        self._metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        # A channel of its own (not the process-wide subchannel pool, which would hand a new
        # client the reconnect backoff of an old one) that retries a restarted shard soon.
        opts = grpc_options() + [("grpc.use_local_subchannel_pool", 1),
                                 ("grpc.initial_reconnect_backoff_ms", 100),
                                 ("grpc.max_reconnect_backoff_ms", 2000)]  # fmt: skip
        if (private_key is None) != (certificate_chain is None):
            raise ValueError("a client certificate needs both private_key and certificate_chain")
        if root_certificates is not None:  # TLS; mutual when a client certificate is given
            creds = grpc.ssl_channel_credentials(root_certificates, private_key,
                                                 certificate_chain)  # fmt: skip
            self._channels = [grpc.secure_channel(a, creds, options=opts) for a in addresses]
        else:
            self._channels = [grpc.insecure_channel(a, options=opts) for a in addresses]
        self._stubs = [store_pb2_grpc.EmbeddingStoreStub(c) for c in self._channels]
        self._pool = ThreadPoolExecutor(len(addresses), thread_name_prefix="shard-rpc")
        self._configs: dict[str, TableConfig] = {}
        # Per table, the tag this client last set (or "" after its load): sent with every
        # call in _FENCED, so that a second run taking the shards over (a load or a tag of
        # its own) stops this one instead of sharing its rows with it.
        self._fences: dict[str, str] = {}
        self._fence_metadata = self._metadata  # (with the fences, made when they change)

    @property
    def num_shards(self) -> int:
        return len(self.addresses)

    @property
    def parts(self) -> int:
        return len(self.addresses)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        for c in self._channels:
            c.close()

    # ------------------------------------------------------------------ plumbing

    def _call(self, shard: int, method: str, request, idempotent: bool):
        rpc = getattr(self._stubs[shard], method)
        metadata = self._fence_metadata if method in _FENCED else self._metadata
        for attempt in range(self.retries + 1 if idempotent else 1):
            try:
                return rpc(request, timeout=self.timeout, metadata=metadata)
            except grpc.RpcError as e:
                code = e.code()
                if idempotent and code in _RETRYABLE and attempt < self.retries:
                    time.sleep(0.1 * 2**attempt)
                    continue
                error = InvalidRequest if code == grpc.StatusCode.INVALID_ARGUMENT else StoreError
                raise error(f"shard {shard} at {self.addresses[shard]}: {method} failed: "
                            f"{code.name}: {e.details()}", code) from None  # fmt: skip

    def _all(self, method: str, requests: list, idempotent: bool) -> list:
        futures = [self._pool.submit(self._call, i, method, r, idempotent)
                   for i, r in enumerate(requests)]  # fmt: skip
        return [f.result() for f in futures]

    def _remote_path(self, path: str) -> str:
        """The name the servers take for the caller's snapshot ``path``."""
        if self.snapshot_root is not None:
            return paths.to_root(self.snapshot_root, path)
        return paths.relative(path)

    def _config(self, table: str) -> TableConfig:
        if table not in self._configs:
            stats = json.loads(self._call(0, "Stats", store_pb2.StatsRequest(), True).stats_json)
            if table not in stats:
                raise ValueError(f"unknown table {table!r}; have {sorted(self.tables())}")
            self._configs[table] = config_from_json(stats[table]["config_json"])
        return self._configs[table]

    # ------------------------------------------------------------------ the store interface

    def create_table(self, config: TableConfig) -> None:
        req = store_pb2.CreateTableRequest(config_json=config_to_json(config))
        self._all("CreateTable", [req] * self.num_shards, idempotent=True)
        self._configs[config.name] = config

    def tables(self) -> dict[str, TableConfig]:
        stats = json.loads(self._call(0, "Stats", store_pb2.StatsRequest(), True).stats_json)
        for name, s in stats.items():
            if name != "_shard" and name not in self._configs:
                self._configs[name] = config_from_json(s["config_json"])
        return dict(self._configs)

    def pull(self, table: str, ids: np.ndarray, *, train: bool, with_counts: bool = False,
             shows: np.ndarray | None = None):  # fmt: skip
        ids = check_ids(ids)
        shows = None if shows is None else check_per_id(shows, len(ids), "shows")
        width = COUNT_COLUMNS * with_counts + self._config(table).dim
        perm, off = split_by_shard(ids, self.num_shards)
        parts = [perm[off[s] : off[s + 1]] for s in range(self.num_shards)]
        reqs = [store_pb2.PullRequest(
            table=table, ids=ids[p].astype("<i8").tobytes(), train=train, with_counts=with_counts,
            shows=b"" if shows is None else shows[p].astype("<f4").tobytes(),
        ) for p in parts]  # fmt: skip
        out = np.empty((len(ids), width), np.float32)
        for p, resp in zip(parts, self._all("Pull", reqs, idempotent=not train), strict=True):
            out[p] = np.frombuffer(resp.rows, "<f4").reshape(len(p), width)
        return out

    def push(self, table, ids, grads, *, shows=None, clicks=None, counts=None,
             assume_unique=False) -> None:  # fmt: skip
        ids, grads, shows, clicks, counts = check_push(self._config(table), ids, grads, shows,
                                                       clicks, counts)  # fmt: skip
        perm, off = split_by_shard(ids, self.num_shards)
        reqs = []
        for s in range(self.num_shards):
            p = perm[off[s] : off[s + 1]]
            reqs.append(store_pb2.PushRequest(
                table=table, ids=ids[p].astype("<i8").tobytes(),
                grads=grads[p].astype("<f4").tobytes(), shows=shows[p].astype("<f4").tobytes(),
                clicks=clicks[p].astype("<f4").tobytes(), counts=counts[p].astype("<f4").tobytes(),
                assume_unique=assume_unique,
            ))  # fmt: skip
        self._all("Push", reqs, idempotent=False)

    def begin_pass(self, table: str, batches, *, with_counts: bool = False
                   ) -> device_pass.PassRows:  # fmt: skip
        cfg = self._config(table)
        batches = device_pass.check_batches(batches)
        positions = device_pass.split(batches, self.num_shards, split_by_shard)
        reqs = [store_pb2.BeginPassRequest(table=table, with_counts=with_counts, batches=[
            store_pb2.PassBatch(ids=ids.astype("<i8").tobytes(),
                                occurrences=occ.astype("<f4").tobytes(),
                                clicks=clicks.astype("<f4").tobytes())
            for ids, occ, clicks in device_pass.part_batches(batches, positions, s)])
            for s in range(self.num_shards)]  # fmt: skip
        layout = device_pass.state_layout(cfg)
        parts = []
        for r in self._all("BeginPass", reqs, idempotent=False):
            present = np.frombuffer(r.present, np.uint8).astype(bool)
            n = int(present.sum())
            parts.append(device_pass.PassRows(
                [np.frombuffer(f, np.uint8).astype(bool) for f in r.found],
                [np.frombuffer(c, "<f4").reshape(-1, COUNT_COLUMNS) for c in r.counts],
                [np.frombuffer(x, "<i4") for x in r.slots], np.frombuffer(r.keys, "<i8"), present,
                np.frombuffer(r.weights, "<f4").reshape(n, cfg.dim),
                tuple(np.frombuffer(b, dt).reshape((n, *shape))
                      for b, (dt, shape) in zip(r.state, layout, strict=True)),
                r.clock))  # fmt: skip
        return device_pass.merge(parts, positions, with_counts, [len(b[0]) for b in batches])

    def end_pass(self, table: str, keys: np.ndarray, weights: np.ndarray, state) -> None:
        cfg = self._config(table)
        keys, weights, state = device_pass.check_written(cfg, keys, weights, state)
        layout = device_pass.state_layout(cfg)
        perm, off = split_by_shard(keys, self.num_shards)
        reqs = []
        for s in range(self.num_shards):
            p = perm[off[s] : off[s + 1]]
            reqs.append(store_pb2.EndPassRequest(
                table=table, keys=keys[p].astype("<i8").tobytes(),
                weights=weights[p].astype("<f4").tobytes(),
                state=[np.ascontiguousarray(x[p], dt).tobytes()
                       for x, (dt, _) in zip(state, layout, strict=True)]))  # fmt: skip
        self._all("EndPass", reqs, idempotent=False)

    def shrink(self) -> dict[str, int]:
        out: dict[str, int] = {}
        req = store_pb2.ShrinkRequest(tables=sorted(self._fences))
        for resp in self._all("Shrink", [req] * self.num_shards, False):
            for name, n in resp.evicted.items():
                out[name] = out.get(name, 0) + n
        return out

    def advance_clock(self, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"advance_clock needs n >= 0, got {n}")
        req = store_pb2.AdvanceClockRequest(n=n, tables=sorted(self._fences))
        self._all("AdvanceClock", [req] * self.num_shards, False)

    def set_tag(self, table: str, tag: str) -> None:
        self._config(table)
        req = store_pb2.SetTagRequest(table=table, tag=tag)
        self._all("SetTag", [req] * self.num_shards, idempotent=True)
        self.fence(table, tag)

    def fence(self, table: str, tag: str) -> None:
        self._fences[table] = tag
        self._fence_metadata = self._metadata + ((FENCE_HEADER, json.dumps(self._fences)),)

    def stats(self) -> dict[str, dict[str, Any]]:
        reqs = [store_pb2.StatsRequest()] * self.num_shards
        per = [json.loads(r.stats_json) for r in self._all("Stats", reqs, True)]
        out = {}
        for name in sorted(set().union(*per) - {"_shard"}):
            missing = [f"{i} ({self.addresses[i]})" for i, p in enumerate(per) if name not in p]
            if missing:
                raise StoreError(f"table {name!r} is missing on shard(s) "
                                 f"{', '.join(missing)}: create it there (create_table) "
                                 "or restore those shards")  # fmt: skip
            out[name] = merge_shard_stats([p[name] for p in per])
        return out

    # ------------------------------------------------------------------ snapshots

    def save(self, table: str, path: str, kind: str, parent: Sequence[dict] | None = None,
             *, min_score: float | None = None, max_unseen: int | None = None,
             delta_threshold: float | None = None, float16: bool = False,
             cache_fraction: float = 0.1) -> Saved:  # fmt: skip
        """Each shard writes ``path/shard-<i>`` under its snapshot root."""
        remote = self._remote_path(path)
        if parent is not None and len(parent) != self.num_shards:
            raise ValueError(f"a delta on {self.num_shards} shards needs {self.num_shards} "
                             f"parent manifests, got {len(parent)}")  # fmt: skip
        reqs = [store_pb2.SnapshotRequest(
            table=table, path=remote, kind=kind,
            parent_manifest_json=json.dumps(parent[i]) if parent else "",
            min_score=min_score or 0.0, has_min_score=min_score is not None, float16=float16,
            cache_fraction=cache_fraction, max_unseen=max_unseen or 0,
            has_max_unseen=max_unseen is not None, delta_threshold=delta_threshold or 0.0,
            has_delta_threshold=delta_threshold is not None,
        ) for i in range(self.num_shards)]  # fmt: skip
        manifests = [json.loads(r.manifest_json) for r in self._all("Snapshot", reqs, False)]
        return Saved([os.path.join(path, f"shard-{i}") for i in range(self.num_shards)],
                     manifests)  # fmt: skip

    def load(self, table: str, chains: list[list[str]]) -> int:
        """Replaces ``table`` on every shard by the snapshot chains (one per shard that wrote
        them, any count); returns the rows loaded."""
        chains = [[self._remote_path(p) for p in c] for c in chains]
        req = store_pb2.LoadRequest(table=table,
                                    chains=[store_pb2.Chain(paths=c) for c in chains])  # fmt: skip
        rows = sum(r.rows for r in self._all("Load", [req] * self.num_shards, True))
        self.fence(table, "")  # (the shards cleared its tag)
        return rows
