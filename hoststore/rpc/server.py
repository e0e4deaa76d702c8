"""A store shard as a gRPC server process.

  python -m hoststore.server --port=50051 --shard_index=0 --num_shards=2 \\
      [--host=127.0.0.1] [--tls_cert=... --tls_key=... [--tls_client_ca=...]] \\
      [--token_file=...] [--snapshot_root=DIR] [--snapshot_on_exit=/path] [--grace_seconds=5]

Binds 127.0.0.1 unless told otherwise, serves the standard gRPC health service, and on
SIGTERM/SIGINT reports NOT_SERVING, optionally writes a last base snapshot of every table,
then stops with a grace period. A malformed request is answered INVALID_ARGUMENT with the
reason and changes nothing; the shard keeps serving. Clients name snapshots by paths relative
to ``--snapshot_root``; the shard writes and reads nothing outside it (and no snapshots at
all without it).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hmac
import json
import logging
import os
import signal
import threading
from concurrent import futures

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hoststore import device_pass, snapshot
from hoststore._hashing import shard_of
from hoststore.config import config_from_json, config_to_json
from hoststore.disk_tier import DiskTier
from hoststore.rpc import paths
from hoststore.rpc.channel import FENCE_HEADER, SERVICE, grpc_options
from hoststore.rpc.proto import store_pb2, store_pb2_grpc
from hoststore.table import EmbeddingTable

log = logging.getLogger("hoststore.server")


def _array(buf: bytes, dtype: str, what: str, context) -> np.ndarray:
    size = np.dtype(dtype).itemsize
    if len(buf) % size:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                      f"{what}: {len(buf)} bytes is not a multiple of {size}")  # fmt: skip
    return np.frombuffer(buf, dtype)


def _answered(handler):
    """Every failure of a handler becomes a status with its reason, never UNKNOWN: a bad
    argument INVALID_ARGUMENT, anything else INTERNAL (logged with its traceback)."""

    @functools.wraps(handler)
    def wrapper(self, request, context):
        try:
            return handler(self, request, context)
        except Exception as e:
            if context.code() is not None:  # the handler aborted with its own status
                raise
            if isinstance(e, ValueError):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, self._say(str(e)))
            log.exception("%s failed", handler.__name__)
            context.abort(grpc.StatusCode.INTERNAL, self._say(
                f"{handler.__name__} failed: {type(e).__name__}: {e}"))  # fmt: skip

    return wrapper


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one request may ask of a shard; beyond it the request is refused
    (RESOURCE_EXHAUSTED, or INVALID_ARGUMENT for a clock that would overflow) and the
    shard keeps serving. Each is a server flag of the same name."""

    max_ids_per_call: int = 4_000_000
    max_new_rows_per_call: int = 1_000_000  # ids a training pull may add as rows or counters
    max_initial_capacity: int = 1 << 24
    max_tables: int = 64
    max_clock_advance: int = 1_000_000


_CLOCK_MAX = 2**31 - 1  # last-seen ticks are int32
_MAX_FENCE_HEADER = 1 << 16


class StoreServicer(store_pb2_grpc.EmbeddingStoreServicer):
    def __init__(self, shard_index: int, num_shards: int, limits: Limits | None = None,
                 snapshot_root: str | None = None, tier: DiskTier | None = None):  # fmt: skip
        self.limits = limits or Limits()
        self.tier = tier  # each table's RAM budget and where its cold rows go
        self.snapshot_root = snapshot_root
        if not 0 <= shard_index < num_shards:
            raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
        self.shard_index = shard_index
        self.num_shards = num_shards
        self.tables: dict[str, EmbeddingTable] = {}
        self._configs: dict[str, str] = {}
        self._tags: dict[str, str] = {}
        self._registry = threading.Lock()

    # ------------------------------------------------------------------ helpers

    def _table(self, name: str, context) -> EmbeddingTable:
        t = self.tables.get(name)
        if t is None:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"unknown table {name!r}; have {sorted(self.tables)}")  # fmt: skip
        return t

    def _fenced(self, context, tagging: str | None = None, new_tag: str = "") -> None:
        """Refuses (FAILED_PRECONDITION) a call whose client last saw a table at another
        tag than the table holds now: another client loaded or tagged it since (two runs
        on one store), and this client's writes would land in that run's rows. The client
        sends the tag it last set or loaded, per table (``FENCE_HEADER``, JSON); tables it
        never tagged are not fenced. ``tagging``: the table a SetTag sets to ``new_tag``
        (its retry, the tag already set, passes)."""
        raw = dict(context.invocation_metadata()).get(FENCE_HEADER)
        if raw is None:
            return
        if len(raw) > _MAX_FENCE_HEADER:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{FENCE_HEADER} longer than {_MAX_FENCE_HEADER} characters")  # fmt: skip
        try:
            fences = json.loads(raw)
            ok = isinstance(fences, dict) and all(isinstance(v, str) for v in fences.values())
        except ValueError:
            ok = False
        if not ok:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{FENCE_HEADER}: want a JSON object of table -> tag")  # fmt: skip
        for name, expected in fences.items():
            now = self._tags.get(name)
            if now is None or now == expected or (name == tagging and now == new_tag):
                continue
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          f"table {name!r} is now tagged {now!r}, not {expected!r} as this "
                          "client left it: another client loaded or tagged it since (two "
                          "runs on one store?); this client's calls are refused")  # fmt: skip

    def _named(self, names, context) -> dict[str, EmbeddingTable]:
        """The tables a store-wide call names (all of them for none): two runs that share
        these shards, each with tables of its own, age only their own."""
        if not names:
            return dict(self.tables)
        return {n: self._table(n, context) for n in names}

    def _say(self, message: str) -> str:
        """An error message for the client: its own paths, nothing of the server's."""
        return paths.scrub(self.snapshot_root, message) if self.snapshot_root else message

    def _path(self, path: str, context) -> str:
        """The client's snapshot path confined under the root (INVALID_ARGUMENT if not)."""
        if not self.snapshot_root:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "this shard was started without --snapshot_root: it writes and reads "
                          "no snapshots")  # fmt: skip
        try:
            return paths.confine(self.snapshot_root, path)
        except paths.PathEscape as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))

    def _ids(self, buf: bytes, context) -> np.ndarray:
        ids = _array(buf, "<i8", "ids", context)
        if len(ids) > self.limits.max_ids_per_call:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"{len(ids):,} ids in one call; this shard takes at most "
                          f"{self.limits.max_ids_per_call:,} (--max_ids_per_call)")  # fmt: skip
        if self.num_shards > 1 and len(ids):
            wrong = np.flatnonzero(shard_of(ids, self.num_shards) != self.shard_index)
            if len(wrong):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{len(wrong)} ids belong to other shards (e.g. {ids[wrong[0]]}); "
                              f"this is shard {self.shard_index} of {self.num_shards}")  # fmt: skip
        return ids

    # ------------------------------------------------------------------ RPCs

    @_answered
    def CreateTable(self, request, context):
        cfg = config_from_json(request.config_json)  # a bad config: INVALID_ARGUMENT
        canonical = config_to_json(cfg)
        if cfg.initial_capacity > self.limits.max_initial_capacity:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"initial_capacity {cfg.initial_capacity:,} is above this shard's "
                          f"{self.limits.max_initial_capacity:,} "
                          "(--max_initial_capacity)")  # fmt: skip
        with self._registry:
            if cfg.name not in self.tables and len(self.tables) >= self.limits.max_tables:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"this shard holds {len(self.tables)} tables, its limit "
                              "(--max_tables)")  # fmt: skip
            if cfg.name in self.tables:
                if self._configs[cfg.name] != canonical:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"table {cfg.name!r} exists with another config")  # fmt: skip
                return store_pb2.CreateTableResponse(created=False)
            self.tables[cfg.name] = EmbeddingTable(cfg, tier=self.tier)
            self._configs[cfg.name] = canonical
            self._tags[cfg.name] = ""
        return store_pb2.CreateTableResponse(created=True)

    @_answered
    def Pull(self, request, context):
        t = self._table(request.table, context)
        self._fenced(context)  # (after the table: a Load swapping it in between is seen)
        ids = self._ids(request.ids, context)
        shows = _array(request.shows, "<f4", "shows", context) if request.shows else None
        if request.train and len(ids) > self.limits.max_new_rows_per_call:
            # Distinct ids without a row: at most this many rows or counters get added.
            new = int((~t.row_stats(np.unique(ids))["present"]).sum())
            if new > self.limits.max_new_rows_per_call:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{new:,} new ids in one training pull; this shard takes at most "
                              f"{self.limits.max_new_rows_per_call:,} "
                              "(--max_new_rows_per_call)")  # fmt: skip
        rows = t.pull(ids, train=request.train, with_counts=request.with_counts, shows=shows)
        return store_pb2.PullResponse(rows=rows.astype("<f4").tobytes(), dim=t.config.dim)

    @_answered
    def Push(self, request, context):
        t = self._table(request.table, context)
        self._fenced(context)
        ids = self._ids(request.ids, context)
        dim = t.config.dim
        grads = _array(request.grads, "<f4", "grads", context)
        if grads.size != len(ids) * dim:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"grads: {grads.size} floats for {len(ids)} ids of table "
                          f"{request.table!r} (dim {dim})")  # fmt: skip
        shows = _array(request.shows, "<f4", "shows", context) if request.shows else None
        clicks = _array(request.clicks, "<f4", "clicks", context) if request.clicks else None
        counts = _array(request.counts, "<f4", "counts", context) if request.counts else None
        t.push(ids, grads.reshape(len(ids), dim), shows=shows, clicks=clicks, counts=counts,
               assume_unique=request.assume_unique)  # fmt: skip
        return store_pb2.PushResponse()

    @_answered
    def Shrink(self, request, context):
        self._fenced(context)
        tables = self._named(request.tables, context)
        return store_pb2.ShrinkResponse(evicted={n: t.shrink() for n, t in tables.items()})

    @_answered
    def AdvanceClock(self, request, context):
        self._fenced(context)
        tables = self._named(request.tables, context)
        if request.n < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"n must be >= 0, got {request.n}")
        if request.n > self.limits.max_clock_advance:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"advance of {request.n:,} ticks in one call; at most "
                          f"{self.limits.max_clock_advance:,} (--max_clock_advance)")  # fmt: skip
        if any(t.clock + request.n > _CLOCK_MAX for t in tables.values()):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"advancing by {request.n:,} would overflow the clock")  # fmt: skip
        for t in tables.values():
            t.advance_clock(request.n)
        return store_pb2.AdvanceClockResponse()

    @_answered
    def Snapshot(self, request, context):
        t = self._table(request.table, context)
        self._fenced(context)
        parent = json.loads(request.parent_manifest_json) if request.parent_manifest_json else None
        self._path(request.path, context)  # the snapshot's own name, then this shard's part
        path = self._path(f"{request.path}/shard-{self.shard_index}", context)
        try:
            m = snapshot.save(t, path, request.kind, parent,
                              min_score=request.min_score if request.has_min_score else None,
                              max_unseen=request.max_unseen if request.has_max_unseen else None,
                              delta_threshold=request.delta_threshold
                              if request.has_delta_threshold else None,
                              float16=request.float16,
                              cache_fraction=request.cache_fraction)  # fmt: skip
        except snapshot.SnapshotError as e:  # (a ValueError is INVALID_ARGUMENT anyway)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self._say(str(e)))
        return store_pb2.SnapshotResponse(manifest_json=json.dumps(m))

    @_answered
    def Load(self, request, context):
        t = self._table(request.table, context)
        if not request.chains:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Load needs at least one chain")
        n, i = self.num_shards, self.shard_index
        chains = [[self._path(p, context) for p in c.paths] for c in request.chains]
        try:  # every shard reads every chain and keeps its own keys; shard 0 keeps the totals
            fresh = snapshot.load_chains(chains, t.config,
                                         keep=lambda keys: shard_of(keys, n) == i,
                                         totals=i == 0, tier=self.tier)  # fmt: skip
        except (snapshot.SnapshotError, OSError) as e:  # a file, not the server, is at fault
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, self._say(str(e)))
        with self._registry:  # the tag first: a call that fetched the table before the
            # swap and checks its fence after it is refused (whoever loads says what it holds)
            self._tags[request.table] = ""
            self.tables[request.table] = fresh
        t.close()
        return store_pb2.LoadResponse(rows=len(fresh))

    @_answered
    def Stats(self, request, context):
        out = {n: {**t.stats(), "config_json": self._configs[n], "tag": self._tags.get(n, "")}
               for n, t in self.tables.items()}  # fmt: skip
        out["_shard"] = {"index": self.shard_index, "num_shards": self.num_shards}
        return store_pb2.StatsResponse(stats_json=json.dumps(out, default=float))

    @_answered
    def SetTag(self, request, context):
        self._table(request.table, context)
        if len(request.tag) > 4096:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "tag longer than 4096 characters")
        with self._registry:  # the check and the set at once: one of two racing clients wins
            self._fenced(context, request.table, request.tag)
            self._tags[request.table] = request.tag
        return store_pb2.SetTagResponse()

    @_answered
    def BeginPass(self, request, context):
        t = self._table(request.table, context)
        self._fenced(context)
        batches, total = [], 0
        for i, b in enumerate(request.batches):
            ids = self._ids(b.ids, context)
            total += len(ids)
            if total > self.limits.max_ids_per_call:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"more than {self.limits.max_ids_per_call:,} ids in one pass "
                              "(--max_ids_per_call)")  # fmt: skip
            occ = _array(b.occurrences, "<f4", f"pass batch {i} occurrences", context)
            clicks = _array(b.clicks, "<f4", f"pass batch {i} clicks", context)
            batches.append((ids, occ if len(b.occurrences) else None,
                            clicks if len(b.clicks) else None))  # fmt: skip
        if total > self.limits.max_new_rows_per_call:  # as for a training pull
            uniq = np.unique(np.concatenate([b[0] for b in batches]))
            new = int((~t.row_stats(uniq)["present"]).sum())
            if new > self.limits.max_new_rows_per_call:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"{new:,} new ids in one pass; this shard takes at most "
                              f"{self.limits.max_new_rows_per_call:,} "
                              "(--max_new_rows_per_call)")  # fmt: skip
        p = t.begin_pass(batches, with_counts=request.with_counts)
        little = [np.ascontiguousarray(x, dt) for x, (dt, _) in
                  zip(p.state, device_pass.state_layout(t.config), strict=True)]  # fmt: skip
        return store_pb2.BeginPassResponse(
            found=[f.astype(np.uint8).tobytes() for f in p.found],
            counts=[c.astype("<f4").tobytes() for c in p.counts],
            slots=[x.astype("<i4").tobytes() for x in p.slots],
            keys=p.keys.astype("<i8").tobytes(), present=p.present.astype(np.uint8).tobytes(),
            weights=p.weights.astype("<f4").tobytes(), state=[x.tobytes() for x in little],
            clock=p.clock,
        )  # fmt: skip

    @_answered
    def EndPass(self, request, context):
        t = self._table(request.table, context)
        self._fenced(context)
        keys = self._ids(request.keys, context)
        n, dim = len(keys), t.config.dim
        weights = _array(request.weights, "<f4", "pass weights", context)
        layout = device_pass.state_layout(t.config)
        if weights.size != n * dim or len(request.state) != len(layout):
            why = (
                f"pass weights and state must hold {n} rows of table {request.table!r} "
                f"(dim {dim}, {len(layout)} state columns)"
            )
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)
        state = []
        for buf, (dt, shape) in zip(request.state, layout, strict=True):
            col = _array(buf, dt.str, "pass state", context)
            if col.size != n * int(np.prod(shape, dtype=np.int64)):
                why = f"a pass state column must hold {n} rows of shape {shape}"
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)
            state.append(col.reshape((n, *shape)))
        t.end_pass(keys, weights.reshape(n, dim), tuple(state))
        return store_pb2.EndPassResponse()


class TokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without ``authorization: Bearer <token>`` (health checks excepted)."""

    def __init__(self, token: str):
        self._expected = f"Bearer {token}"

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation, details):
        if details.method.startswith("/grpc.health."):
            return continuation(details)
        got = dict(details.invocation_metadata).get("authorization", "")
        if hmac.compare_digest(got.encode(), self._expected.encode()):
            return continuation(details)
        return self._deny


def serve(
    port: int, shard_index: int, num_shards: int, host: str = "127.0.0.1",
    tls_cert: str | None = None, tls_key: str | None = None, token: str | None = None,
    max_workers: int = 8, limits: Limits | None = None, snapshot_root: str | None = None,
    tls_client_ca: str | None = None, tier: DiskTier | None = None,
):  # fmt: skip
    """Starts a shard; returns (server, servicer, health servicer, bound port). ``token``:
    the bearer token every call must carry (None: no authentication; a blank one is
    refused, never taken as none)."""
    if token is not None and not token.strip():
        raise ValueError("a blank token would turn authentication off; pass token=None to "
                         "serve without one")  # fmt: skip
    interceptors = [TokenInterceptor(token)] if token is not None else []
    server = grpc.server(futures.ThreadPoolExecutor(max_workers), interceptors=interceptors,
                         options=grpc_options())  # fmt: skip
    servicer = StoreServicer(shard_index, num_shards, limits, snapshot_root, tier)
    store_pb2_grpc.add_EmbeddingStoreServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{host}:{port}"
    if tls_cert:
        with open(tls_cert, "rb") as c, open(tls_key, "rb") as k:
            pair = [(k.read(), c.read())]
        if tls_client_ca:
            with open(tls_client_ca, "rb") as ca:
                creds = grpc.ssl_server_credentials(pair, root_certificates=ca.read(),
                                                    require_client_auth=True)  # fmt: skip
        else:
            creds = grpc.ssl_server_credentials(pair)
        bound = server.add_secure_port(address, creds)
    else:
        bound = server.add_insecure_port(address)
    server.start()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, servicer, health_servicer, bound


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="A hoststore shard server.")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--shard_index", type=int, required=True)
    p.add_argument("--num_shards", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--tls_cert")
    p.add_argument("--tls_key")
    p.add_argument("--tls_client_ca",
                   help="PEM of the CA that signs client certificates: mutual TLS, a client "
                        "without a certificate it signed is refused at the handshake")  # fmt: skip
    p.add_argument("--token_file")
    p.add_argument("--snapshot_root",
                   help="clients' snapshots are written and read under this directory only "
                        "(without it the shard takes no Snapshot or Load calls)")  # fmt: skip
    p.add_argument("--snapshot_on_exit", help="write a base snapshot of every table here")
    p.add_argument("--store_memory_mb", type=float, default=0.0,
                   help="RAM for each table's rows (0: all in RAM); the rest go to "
                        "--store_disk_dir")  # fmt: skip
    p.add_argument("--store_disk_dir",
                   help="local directory for rows beyond --store_memory_mb (scratch: "
                        "snapshots are the durable copy)")  # fmt: skip
    p.add_argument("--grace_seconds", type=float, default=5.0)
    for f in dataclasses.fields(Limits):
        p.add_argument(f"--{f.name}", type=int, default=f.default)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shard %(process)d %(message)s")
    if not 0 <= a.port <= 65535:
        p.error(f"--port={a.port}: must be in [0, 65535] (0: any free port)")
    if a.num_shards < 1 or not 0 <= a.shard_index < a.num_shards:
        p.error(f"--shard_index={a.shard_index} --num_shards={a.num_shards}: the index must "
                "be in [0, num_shards)")  # fmt: skip
    if bool(a.tls_cert) != bool(a.tls_key):
        p.error("--tls_cert and --tls_key go together")
    for flag in ("tls_cert", "tls_key", "tls_client_ca"):
        if getattr(a, flag):
            try:
                open(getattr(a, flag), "rb").close()
            except OSError as e:
                p.error(f"--{flag} {getattr(a, flag)}: cannot read it ({e.strerror})")
    token = None
    if a.token_file:  # a blank or unreadable credential never turns authentication off
        try:
            token = open(a.token_file).read().strip()
        except OSError as e:
            p.error(f"--token_file {a.token_file}: cannot read it ({e.strerror})")
        if not token:
            p.error(f"--token_file {a.token_file} is empty: refusing to serve without a token")
    if a.tls_client_ca and not a.tls_cert:
        p.error("--tls_client_ca needs --tls_cert and --tls_key (mutual TLS is TLS first)")
    if a.snapshot_root and not os.path.isdir(a.snapshot_root):
        p.error(f"--snapshot_root {a.snapshot_root} is not a directory")
    if a.store_memory_mb < 0:
        p.error(f"--store_memory_mb={a.store_memory_mb}: must be >= 0 (0: all rows in RAM)")
    if bool(a.store_memory_mb) != bool(a.store_disk_dir):
        p.error("--store_memory_mb and --store_disk_dir go together")
    # Made now, not at the first table (the disk tier) or at shutdown (the last snapshot).
    for flag in ("store_disk_dir", "snapshot_on_exit"):
        if getattr(a, flag):
            try:
                os.makedirs(getattr(a, flag), exist_ok=True)
            except OSError as e:
                p.error(f"--{flag} {getattr(a, flag)}: cannot make it a directory ({e.strerror})")
    tier = DiskTier(a.store_disk_dir, memory_mb=a.store_memory_mb) if a.store_disk_dir else None
    limits = Limits(**{f.name: getattr(a, f.name) for f in dataclasses.fields(Limits)})
    try:
        server, servicer, health_servicer, port = serve(
            a.port, a.shard_index, a.num_shards, a.host, a.tls_cert, a.tls_key, token,
            limits=limits, snapshot_root=a.snapshot_root, tls_client_ca=a.tls_client_ca,
            tier=tier,
        )  # fmt: skip
    except RuntimeError as e:  # grpc: the address cannot be bound
        p.error(f"--host {a.host} --port {a.port}: {str(e).split(';')[0]}")
    log.info("shard %d/%d serving on %s:%d", a.shard_index, a.num_shards, a.host, port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    log.info("stopping: NOT_SERVING, grace %.1fs", a.grace_seconds)
    health_servicer.enter_graceful_shutdown()
    server.stop(a.grace_seconds).wait()
    if a.snapshot_on_exit:
        for name, t in servicer.tables.items():
            path = os.path.join(a.snapshot_on_exit, name, f"shard-{a.shard_index}")
            _save_rotating(t, path)
            log.info("wrote the last snapshot of %s to %s", name, path)


def _save_rotating(table, path: str) -> None:
    """A base at ``path`` on every shutdown: written beside it, then swapped in (the one
    before stays at ``path.prev`` until the next swap)."""
    import shutil

    new, prev = path + ".new", path + ".prev"
    shutil.rmtree(new, ignore_errors=True)
    snapshot.save(table, new, "base")
    if os.path.exists(path):
        shutil.rmtree(prev, ignore_errors=True)
        os.replace(path, prev)
    os.replace(new, path)


if __name__ == "__main__":
    main()
