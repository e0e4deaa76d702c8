"""The store over gRPC: real shard processes on loopback, the same interface as in process."""

from __future__ import annotations

import dataclasses
import filecmp
import os
import signal
import subprocess
import sys
import uuid

import grpc
import numpy as np
import pytest

import hoststore as hs
from hoststore import StoreError
from hoststore import snapshot as snap
from hoststore.config import config_to_json
from hoststore.rpc import LocalCluster, ShardedStore, serve
from hoststore.rpc.proto import regenerate, store_pb2, store_pb2_grpc
from hoststore.store import LocalStore
from tests.conftest import REPO, Cluster

DIM = 4


def _cfg(name, **kw):
    base = dict(
        optimizer=hs.optimizers.adagrad(0.2),
        admission=hs.count_filter(2),
        eviction=hs.Eviction(decay=0.9, unseen_ticks=2),
        initializer=hs.uniform(0.1),
    )
    base.update(kw)
    return hs.TableConfig(name, DIM, **base)


# A RAM budget of ~15 rows per table and shard: most rows of these tests live on disk.
TIER_MB = 0.001


@pytest.fixture(scope="module")
def tiered_cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiered")
    c = Cluster(2, ("--store_memory_mb", str(TIER_MB), "--store_disk_dir", str(tmp / "disk")),
                token="s3cret", tmp=str(tmp))  # fmt: skip
    yield c
    c.stop()


@pytest.fixture(params=["local", "local_sharded", "local_tiered", "remote", "remote_tiered"])
def store(request, cluster, tmp_path):
    """Every kind of store, with and without a disk tier (the tests compare them with an
    all-RAM in-process reference, or with Paddle's rules)."""
    if request.param.startswith("local"):
        tier = (
            hs.DiskTier(str(tmp_path / "disk"), max_rows=16) if "tiered" in request.param else None
        )
        s = LocalStore([], shards=3 if request.param == "local_sharded" else 2 if tier else 1,
                       tier=tier)  # fmt: skip
    else:
        c = request.getfixturevalue("tiered_cluster") if "tiered" in request.param else cluster
        s = c.connect(token=c.token, timeout=60)  # (a shard compiles kernels on first use)
    yield s
    s.close()


def _check_tier_used(store, table):
    """A tiered store's table has rows on disk now (the test reached the disk tier)."""
    stats = store.stats()[table]
    assert stats.get("disk_rows", 1) > 0, stats


def test_a_pass_lent_by_every_store_equals_the_per_batch_loop(store):
    """begin_pass / end_pass (statistics in batch order, rows lent and written back) give
    what per-batch pulls and pushes give, on every kind of store."""
    from tests.hoststore.test_pass import on_device, passes, per_batch

    cfg = _cfg(f"p{uuid.uuid4().hex[:8]}", optimizer=hs.optimizers.adam(0.05))
    store.create_table(cfg)
    ref = LocalStore([cfg])
    universe = np.array([0, -1, 1, 2**63 - 1, -(2**63), *range(5, 40)], np.int64)
    bound = store.tables()[cfg.name]
    for batches in passes(seed=3, n_passes=3):
        read = on_device(lambda b, **kw: store.begin_pass(cfg.name, b, **kw),
                         lambda *a: store.end_pass(cfg.name, *a), bound, batches)  # fmt: skip
        want = [per_batch(_Bound(ref, cfg.name), b) for b in batches]
        for a, b in zip(read, want, strict=True):
            np.testing.assert_array_equal(a, b)
        got, exp = (s.pull(cfg.name, universe, train=False, with_counts=True) for s in (store, ref))
        np.testing.assert_array_equal(got, exp)
        for s in (store, ref):
            s.advance_clock()
    assert store.stats()[cfg.name]["rows"] == ref.stats()[cfg.name]["rows"] > 0
    with pytest.raises(ValueError, match="no row"):
        store.end_pass(cfg.name, np.array([10**15], np.int64), np.zeros((1, DIM), np.float32),
                       tuple(np.zeros((1, *shape), dt) for dt, shape in
                             hs.device_pass.state_layout(cfg)))  # fmt: skip


class _Bound:
    """One table of a store, with a table's pull/push signature."""

    def __init__(self, store, name):
        self.store, self.name = store, name

    def pull(self, ids, **kw):
        return self.store.pull(self.name, ids, **kw)

    def push(self, ids, grads, **kw):
        return self.store.push(self.name, ids, grads, **kw)


def test_interface_matches_an_in_process_reference(store):
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}")
    store.create_table(cfg)
    ref = LocalStore([cfg])
    rng = np.random.default_rng(0)
    universe = np.array([0, -1, 2**63 - 1, -(2**63)] + list(range(1, 60)), np.int64)
    for step in range(25):
        ids = rng.choice(universe, 40)
        counts = step % 2 == 1  # every other pull also brings (show, click)
        got, want = (s.pull(cfg.name, ids, train=True, with_counts=counts) for s in (store, ref))
        np.testing.assert_array_equal(got, want)
        c = hs.COUNT_COLUMNS * counts
        np.testing.assert_array_equal(got[:, c:], ref.pull(cfg.name, ids, train=False))
        grads = rng.normal(size=(40, DIM)).astype(np.float32)
        clicks = rng.integers(0, 2, 40).astype(np.float32)
        for s in (store, ref):
            s.push(cfg.name, ids, grads, clicks=clicks)
        if step % 5 == 4:
            for s in (store, ref):
                s.advance_clock(1)
            assert store.shrink()[cfg.name] == ref.shrink()[cfg.name]
    np.testing.assert_array_equal(
        store.pull(cfg.name, universe, train=False), ref.pull(cfg.name, universe, train=False)
    )
    _check_tier_used(store, cfg.name)
    got, want = store.stats()[cfg.name], ref.stats()[cfg.name]
    for k in ("rows", "pending", "admitted", "evicted", "rejected", "clock"):
        assert got[k] == want[k], k


def test_save_and_load_reproduce_the_table_on_every_store(store, tmp_path):
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}")
    store.create_table(cfg)
    store.create_table(cfg)  # the same config again: nothing happens
    with pytest.raises(ValueError, match="another config"):
        store.create_table(dataclasses.replace(cfg, dim=DIM + 1))
    rng = np.random.default_rng(1)
    keys = np.arange(-40, 40, dtype=np.int64)
    for _ in range(2):
        store.pull(cfg.name, keys, train=True)
    store.push(cfg.name, keys, rng.normal(size=(80, DIM)).astype(np.float32))
    base = store.save(cfg.name, str(tmp_path / "base"), "base")
    _check_tier_used(store, cfg.name)
    store.advance_clock(3)
    store.pull(cfg.name, keys[:10], train=True)
    store.push(cfg.name, keys[:10], rng.normal(size=(10, DIM)).astype(np.float32))
    assert store.shrink()[cfg.name] == 70  # unseen for 3 ticks: the delta deletes them
    delta = store.save(cfg.name, str(tmp_path / "delta"), "delta", base.manifests)
    assert len(delta.paths) == len(base.paths) == len(delta.manifests)
    want = store.pull(cfg.name, keys, train=False, with_counts=True)
    want_stats = store.stats()[cfg.name]
    store.push(cfg.name, keys[:10], np.ones((10, DIM), np.float32))  # changes to undo
    chains = [list(c) for c in zip(base.paths, delta.paths, strict=True)]
    assert store.load(cfg.name, chains) == 10
    np.testing.assert_array_equal(store.pull(cfg.name, keys, train=False, with_counts=True), want)
    got_stats = store.stats()[cfg.name]
    for k in ("rows", "pending", "admitted", "evicted", "clock"):
        assert got_stats[k] == want_stats[k], k
    store.close()


class PaddleXbox:
    """Paddle's CtrCommonAccessor for xbox saves, restated: a show per training occurrence,
    a click per clicked one, DeltaScore += ShowClickScore of each, and Save(param 1 or 2):
    score >= base_threshold, delta score >= delta_threshold (0 for the base), unseen days
    <= delta_keep_days; what is saved restarts its delta score."""

    def __init__(self, nonclk=0.1, click=1.0):
        self.nonclk, self.click, self.clock, self.rows = nonclk, click, 0, {}

    def score(self, s, c):
        return (s - c) * self.nonclk + c * self.click

    def pull(self, ids):
        for k in ids.tolist():
            r = self.rows.setdefault(k, {"show": 0.0, "click": 0.0, "delta": 0.0})
            r["show"] += 1
            r["delta"] += self.score(1, 0)
            r["seen"] = self.clock

    def push(self, ids, clicks):
        for k, c in zip(ids.tolist(), clicks.tolist(), strict=True):
            r = self.rows[k]
            r["click"] += c
            r["delta"] += self.score(0, c)
            r["seen"] = self.clock

    def save(self, base_threshold, delta_threshold, keep_days):
        out = sorted(k for k, r in self.rows.items()
                     if self.score(r["show"], r["click"]) >= base_threshold
                     and r["delta"] >= delta_threshold - 1e-6
                     and self.clock - r["seen"] <= keep_days)  # fmt: skip
        for k in out:
            self.rows[k]["delta"] = 0.0
        return out


def test_serving_deltas_filter_as_paddles_xbox_saves_on_every_store(store, tmp_path):
    """Random pulls, clicks and clock ticks; after each, an xbox base or delta export. The
    keys each one emits are those Paddle's accessor would save, with the live weights."""
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}", admission=hs.always(), eviction=hs.Eviction())
    store.create_table(cfg)
    ref, rng = PaddleXbox(), np.random.default_rng(7)
    universe = np.arange(-30, 30, dtype=np.int64)
    for step in range(12):
        ids = rng.choice(universe, 25)  # repeats: several occurrences in one batch
        store.pull(cfg.name, ids, train=True)
        ref.pull(ids)
        uniq = np.unique(ids)
        clicks = rng.integers(0, 2, len(uniq)).astype(np.float32)
        store.push(cfg.name, uniq, np.zeros((len(uniq), DIM), np.float32), clicks=clicks)
        ref.push(uniq, clicks)
        if step % 3 == 2:
            store.advance_clock(1)
            ref.clock += 1
        delta = 0.0 if step % 4 == 0 else 0.25  # every 4th an xbox base
        saved = store.save(cfg.name, str(tmp_path / f"x{step}"), "serving", min_score=1.5,
                           max_unseen=2, delta_threshold=delta)  # fmt: skip
        keys, weights = zip(*(snap.load_serving(p) for p in saved.paths), strict=True)
        keys, weights = np.concatenate(keys), np.concatenate(weights)
        want = ref.save(1.5, delta, 2)
        assert sorted(keys.tolist()) == want, f"step {step}"
        assert 0 < len(want) < len(ref.rows) or step < 3
        np.testing.assert_array_equal(weights, store.pull(cfg.name, keys, train=False))
        assert saved.manifests[0]["filters"] == {"min_score": 1.5, "max_unseen": 2,
                                                 "delta_threshold": delta}  # fmt: skip
    _check_tier_used(store, cfg.name)
    store.close()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, t: s.push(t, np.array([1], np.int64), np.zeros((1, 3), np.float32)), "shape"),
        (lambda s, t: s.push(t, np.array([1], np.int64), np.full((1, DIM), np.nan)), "NaN"),
        (lambda s, t: s.pull(t, np.array([1.5]), train=True), "int64"),
        (lambda s, t: s.pull("nope", np.array([1], np.int64), train=True), "unknown table"),
    ],
)
def test_bad_calls_raise_value_error_on_both(store, call, match):
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}")
    store.create_table(cfg)
    with pytest.raises(ValueError, match=match):
        call(store, cfg.name)


def _raw(cluster, shard=0, token=True):
    ch = grpc.insecure_channel(cluster.addresses[shard])
    md = (("authorization", f"Bearer {cluster.token}"),) if token else ()
    return store_pb2_grpc.EmbeddingStoreStub(ch), md


def test_malformed_rpcs_are_invalid_argument_and_change_nothing(cluster):
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}", admission=hs.always())
    client = cluster.connect(token=cluster.token)
    client.create_table(cfg)
    keys = np.arange(100, dtype=np.int64)
    before = client.pull(cfg.name, keys, train=True)
    stats = client.stats()[cfg.name]
    stub, md = _raw(cluster)
    mine = keys[hs.shard_of(keys, 2) == 0]
    other = keys[hs.shard_of(keys, 2) == 1]
    ids = mine[:3].tobytes()
    bad = [
        (
            "Pull",
            store_pb2.PullRequest(table=cfg.name, ids=b"\x00" * 12, train=True),
            "multiple of 8",
        ),
        ("Pull", store_pb2.PullRequest(table="missing", ids=ids, train=True), "unknown table"),
        ("Pull", store_pb2.PullRequest(table=cfg.name, ids=other[:2].tobytes()), "other shards"),
        ("Push", store_pb2.PushRequest(table=cfg.name, ids=ids, grads=b"\x00" * 4), "dim 4"),
        (
            "Push",
            store_pb2.PushRequest(
                table=cfg.name, ids=ids, grads=np.full(12, np.nan, "<f4").tobytes()
            ),
            "NaN",
        ),
        (
            "Push",
            store_pb2.PushRequest(
                table=cfg.name, ids=ids, grads=np.zeros(12, "<f4").tobytes(), clicks=b"\x00\x00"
            ),
            "multiple of 4",
        ),
        (
            "Push",
            store_pb2.PushRequest(
                table=cfg.name,
                ids=ids,
                grads=np.zeros(12, "<f4").tobytes(),
                clicks=np.full(3, -1, "<f4").tobytes(),
            ),
            "non-negative",
        ),
        ("CreateTable", store_pb2.CreateTableRequest(config_json="{not json"), "config"),
        (
            "CreateTable",
            store_pb2.CreateTableRequest(
                config_json=config_to_json(dataclasses.replace(cfg, dim=7))
            ),
            "another config",
        ),
        ("AdvanceClock", store_pb2.AdvanceClockRequest(n=-1), ">= 0"),
        (
            "Load",
            store_pb2.LoadRequest(
                table=cfg.name, chains=[store_pb2.Chain(paths=[f"no-{uuid.uuid4().hex}"])]
            ),
            "never committed",
        ),
    ]
    for method, req, reason in bad:
        with pytest.raises(grpc.RpcError) as e:
            getattr(stub, method)(req, metadata=md, timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, e.value.details())
        assert reason in e.value.details(), (method, e.value.details())
    assert client.stats()[cfg.name] == stats
    np.testing.assert_array_equal(client.pull(cfg.name, keys, train=False), before)


def test_missing_token_is_unauthenticated(cluster):
    stub, _ = _raw(cluster, token=False)
    with pytest.raises(grpc.RpcError) as e:
        stub.Stats(store_pb2.StatsRequest(), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(StoreError, match="UNAUTHENTICATED"):
        cluster.connect(token="wrong").stats()


def test_snapshot_and_load_into_another_shard_count(cluster, tmp_path):
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}")
    client = cluster.connect(token=cluster.token)
    client.create_table(cfg)
    keys = np.arange(-50, 50, dtype=np.int64)
    for _ in range(2):
        client.pull(cfg.name, keys, train=True)
    client.push(cfg.name, keys, np.ones((100, DIM), np.float32))
    base = client.save(cfg.name, str(tmp_path / "base"), "base")
    client.push(cfg.name, keys[:10], np.ones((10, DIM), np.float32))
    client.advance_clock(3)
    client.shrink()  # everything unseen for 3 ticks goes: the delta must carry deletions
    client.pull(cfg.name, keys[:5], train=True)
    client.pull(cfg.name, keys[:5], train=True)
    client.save(cfg.name, str(tmp_path / "d1"), "delta", base.manifests)
    want = client.pull(cfg.name, keys, train=False)
    chains = [
        [str(tmp_path / "base" / f"shard-{i}"), str(tmp_path / "d1" / f"shard-{i}")]
        for i in range(2)
    ]
    # A 1-shard deployment loads the 2-shard snapshot.
    one = Cluster(1, token="t1", tmp=str(tmp_path))
    try:
        single = one.connect(token="t1")
        single.create_table(cfg)
        assert single.load(cfg.name, chains) == 5
        np.testing.assert_array_equal(single.pull(cfg.name, keys, train=False), want)
        assert single.stats()[cfg.name]["rows"] == client.stats()[cfg.name]["rows"]
    finally:
        one.stop()
    # And in process, each shard's chain loads on its own.
    rows = sum(len(snap.load(c, cfg)) for c in chains)
    assert rows == 5


def test_down_shard_is_a_clear_error(tmp_path):
    c = Cluster(2, tmp=str(tmp_path))
    client = c.connect(timeout=5, retries=1)
    cfg = _cfg("t")
    client.create_table(cfg)
    c.procs[1].kill()
    c.procs[1].wait()
    with pytest.raises(StoreError, match=f"shard 1 at {c.addresses[1]}.*UNAVAILABLE"):
        client.pull("t", np.arange(50, dtype=np.int64), train=False)
    c.stop()


def test_tls_and_graceful_shutdown_with_last_snapshot(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    out = tmp_path / "last"
    c = Cluster(
        1, [f"--tls_cert={cert}", f"--tls_key={key}", f"--snapshot_on_exit={out}"], creds=creds
    )
    client = c.connect(root_certificates=cert.read_bytes())
    cfg = _cfg("t", admission=hs.always())
    client.create_table(cfg)
    rows = client.pull("t", np.arange(10, dtype=np.int64), train=True)
    with pytest.raises(StoreError):  # plaintext to a TLS port fails
        c.connect(timeout=3, retries=0).stats()
    c.stop(signal.SIGTERM)
    assert c.procs[0].returncode == 0, open(os.path.join(c.log_dir, "shard-0.log")).read()
    restored = snap.load([str(out / "t" / "shard-0")], cfg)
    np.testing.assert_array_equal(restored.pull(np.arange(10, dtype=np.int64), train=False), rows)


def test_snapshot_on_exit_works_on_every_shutdown(tmp_path):
    out = tmp_path / "last"
    keys = np.arange(20, dtype=np.int64)
    for n in (10, 20):  # two runs of the same shard, each shut down with SIGTERM
        c = Cluster(1, [f"--snapshot_on_exit={out}"])
        client = c.connect()
        client.create_table(_cfg("t", admission=hs.always()))
        client.pull("t", keys[:n], train=True)
        c.stop(signal.SIGTERM)
        assert c.procs[0].returncode == 0, open(os.path.join(c.log_dir, "shard-0.log")).read()
        assert len(snap.load([str(out / "t" / "shard-0")], _cfg("t"))) == n
    assert len(snap.load([str(out / "t" / "shard-0.prev")], _cfg("t"))) == 10


@pytest.mark.parametrize("content", ["", "  \n", None], ids=["empty", "blank", "unreadable"])
def test_a_blank_or_unreadable_token_file_stops_the_server_at_start(tmp_path, content):
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    proc = subprocess.run(
        [sys.executable, "-m", "hoststore.server", "--port=0", "--shard_index=0",
         "--num_shards=1", f"--token_file={token_file}"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2 and "--token_file" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize("token", ["", " \n"], ids=["empty", "blank"])
def test_serve_and_the_client_refuse_a_blank_token(token):
    """The library calls too: a blank token is not taken as "no authentication"."""
    with pytest.raises(ValueError, match="a blank token would turn authentication off"):
        serve(0, 0, 1, token=token)
    with pytest.raises(ValueError, match="a blank token; pass token=None"):
        ShardedStore(["127.0.0.1:1"], token=token)


@pytest.mark.parametrize("args", [["--store_memory_mb=8"], ["--store_disk_dir=DIR"],
                                  ["--store_memory_mb=-1", "--store_disk_dir=DIR"]])  # fmt: skip
def test_a_disk_tier_takes_a_budget_and_a_directory_or_the_server_stops(tmp_path, args):
    proc = subprocess.run(
        [sys.executable, "-m", "hoststore.server", "--port=0", "--shard_index=0",
         "--num_shards=1", *(a.replace("DIR", str(tmp_path)) for a in args)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2 and "--store_memory_mb" in proc.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--port=-5"], "--port=-5"),
        (["--port=70000"], "--port=70000"),
        (["--shard_index=3", "--num_shards=2"], "--shard_index=3"),
        (["--tls_cert=TMP/none", "--tls_key=TMP/none"], "--tls_cert TMP/none"),
        (["--store_memory_mb=1", "--store_disk_dir=TMP/file"], "--store_disk_dir TMP/file"),
        (["--snapshot_on_exit=TMP/file/last"], "--snapshot_on_exit TMP/file/last"),
        (["--host=256.1.1.1"], "--host 256.1.1.1"),
    ],
)  # fmt: skip
def test_a_flag_the_server_cannot_use_stops_it_at_start_naming_the_flag(tmp_path, args, flag):
    """Before: a negative port served on another port, a tiered shard served until its
    first table failed, a bad --snapshot_on_exit failed the last snapshot at shutdown, and
    the rest were tracebacks."""
    (tmp_path / "file").write_text("a file\n")
    proc = subprocess.run(
        [sys.executable, "-m", "hoststore.server", "--port=0", "--shard_index=0",
         "--num_shards=1", *(a.replace("TMP", str(tmp_path)) for a in args)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    last = proc.stderr.splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("server.py: error: "), proc.stderr[-2000:]
    assert flag.replace("TMP", str(tmp_path)) in last


def test_hundreds_of_failing_handlers_never_hang_the_shard(cluster, tmp_path):
    """Each failure logs a traceback on the server; its output goes to a file, not to a pipe
    nobody reads, and each comes back INTERNAL with its reason, never UNKNOWN."""
    client = cluster.connect(token=cluster.token, timeout=10)
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}")
    client.create_table(cfg)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    stub, md = _raw(cluster)
    blocked = os.path.relpath(blocker, cluster.snapshot_root)
    for i in range(300):
        req = store_pb2.SnapshotRequest(table=cfg.name, path=f"{blocked}/{i}", kind="base")
        with pytest.raises(grpc.RpcError) as e:
            stub.Snapshot(req, metadata=md, timeout=10)
        assert e.value.code() == grpc.StatusCode.INTERNAL, e.value.details()
        assert "Snapshot failed" in e.value.details()
    assert client.stats()[cfg.name]["rows"] == 0  # still serving


def test_a_table_missing_on_some_shards_is_a_clear_error(cluster):
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}")
    stub, md = _raw(cluster, shard=0)
    stub.CreateTable(store_pb2.CreateTableRequest(config_json=config_to_json(cfg)), metadata=md)
    client = cluster.connect(token=cluster.token)
    with pytest.raises(StoreError, match=f"{cfg.name}' is missing on shard.s. 1 "):
        client.stats()
    client.create_table(cfg)  # completes it on every shard
    assert client.stats()[cfg.name]["shards"] == 2


def test_regenerating_the_stubs_changes_nothing(tmp_path):
    regenerate.generate(str(tmp_path))
    for name in ("store_pb2.py", "store_pb2_grpc.py"):
        assert filecmp.cmp(
            tmp_path / "hoststore" / "rpc" / "proto" / name,
            os.path.join(REPO, "hoststore", "rpc", "proto", name),
            shallow=False,
        ), name


def _state(table) -> dict[str, np.ndarray]:
    rows, pending = table.export_rows(), table.export_pending()
    order, porder = np.argsort(rows["key"]), np.argsort(pending["key"])
    return {**{f"row.{k}": v[order] for k, v in rows.items()},
            **{f"pending.{k}": v[porder] for k, v in pending.items()}}  # fmt: skip


def test_snapshots_under_two_pushing_clients_reproduce_the_live_table(cluster, tmp_path):
    """Base and deltas taken while two other clients pull and push: the chain equals a base
    of the live table taken after they stop (rows, optimizer state, counters), 20 times."""
    import threading
    import time

    for rep in range(20):
        cfg = _cfg(f"t{uuid.uuid4().hex[:8]}", eviction=hs.Eviction(max_rows=400))
        main = cluster.connect(token=cluster.token)
        main.create_table(cfg)
        stop = threading.Event()

        def client(seed, name=cfg.name, stop=stop):
            c = cluster.connect(token=cluster.token)
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                ids = np.unique(rng.integers(0, 2000, 300))
                c.pull(name, ids, train=True)
                c.push(name, ids, rng.normal(size=(len(ids), DIM)).astype(np.float32),
                       clicks=rng.integers(0, 2, len(ids)), assume_unique=True)  # fmt: skip
            c.close()

        threads = [threading.Thread(target=client, args=(rep * 2 + i,)) for i in range(2)]
        for th in threads:
            th.start()
        saved = [main.save(cfg.name, str(tmp_path / f"{rep}-base"), "base")]
        for i in range(3):
            time.sleep(0.02)
            if i == 1:
                main.shrink()
            saved.append(main.save(cfg.name, str(tmp_path / f"{rep}-d{i}"), "delta",
                                   saved[-1].manifests))  # fmt: skip
        stop.set()
        for th in threads:
            th.join()
        saved.append(main.save(cfg.name, str(tmp_path / f"{rep}-last"), "delta",
                               saved[-1].manifests))  # fmt: skip
        truth = main.save(cfg.name, str(tmp_path / f"{rep}-truth"), "base")
        for shard, chain in enumerate(zip(*(s.paths for s in saved), strict=True)):
            got = _state(snap.load(list(chain), cfg))
            want = _state(snap.load([truth.paths[shard]], cfg))
            for k in want:
                np.testing.assert_array_equal(got[k], want[k], err_msg=f"rep {rep} {k}")
        main.close()


def test_a_client_whose_table_another_client_took_over_is_refused(cluster, tmp_path):
    """Two runs pointed at the same shards: once run B loads its checkpoint into a table run
    A tagged (or tags it), every call of A's workers that reads or changes it is refused,
    naming the tags, and B's table is left as B loaded it."""
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}")
    keys = np.arange(-40, 40, dtype=np.int64)
    grads = np.ones((len(keys), DIM), np.float32)
    a, a1, b = (cluster.connect(token=cluster.token) for _ in range(3))
    a.create_table(cfg)
    a.set_tag(cfg.name, "runA/1")
    a1.fence(cfg.name, "runA/1")  # run A's second worker: it expects the tag worker 0 set
    for _ in range(2):
        a.pull(cfg.name, keys, train=True)
    a.push(cfg.name, keys, grads)
    base = a.save(cfg.name, str(tmp_path / "base"), "base")
    a.set_tag(cfg.name, "runA/1")  # setting the tag it holds again (a retry) passes
    b.load(cfg.name, [[p] for p in base.paths])
    b.set_tag(cfg.name, "runB/1")
    b.push(cfg.name, keys[:5], grads[:5])
    want, stats = b.pull(cfg.name, keys, train=False), b.stats()[cfg.name]
    calls = {
        "pull": lambda: a.pull(cfg.name, keys, train=True),
        "eval pull": lambda: a.pull(cfg.name, keys, train=False),
        "push": lambda: a.push(cfg.name, keys, grads),
        "save": lambda: a.save(cfg.name, str(tmp_path / "d1"), "delta", base.manifests),
        "set_tag": lambda: a.set_tag(cfg.name, "runA/2"),
        "shrink": a.shrink,
        "advance_clock": lambda: a.advance_clock(1),
        "begin_pass": lambda: a.begin_pass(cfg.name, [(keys, None, None)]),
        "second worker's push": lambda: a1.push(cfg.name, keys, grads),
    }
    refused = "FAILED_PRECONDITION: table .* is now tagged 'runB/1', not 'runA/1'"
    for name, call in calls.items():
        with pytest.raises(StoreError, match=refused):
            call()
            pytest.fail(f"{name} was not refused")
    assert not os.path.exists(tmp_path / "d1")
    np.testing.assert_array_equal(b.pull(cfg.name, keys, train=False), want)
    assert b.stats()[cfg.name] == stats
    b.push(cfg.name, keys[:5], grads[:5])  # B's own calls go on
    # A load gives a table to whoever loads it: A, loading its own base, takes it back.
    a.load(cfg.name, [[p] for p in base.paths])
    a.set_tag(cfg.name, "runA/1")
    with pytest.raises(StoreError, match="is now tagged 'runA/1', not 'runB/1'"):
        b.push(cfg.name, keys, grads)
    a.close(), a1.close(), b.close()


def test_a_run_ages_only_its_own_tables_on_shared_shards(cluster):
    """Two runs with a table each on the same shards: one's hourly clock and daily shrink
    leave the other's table as it was (before, every table of a shard aged with every run's
    calls: a second run doubled the first one's eviction speed)."""
    mine, theirs = (_cfg(f"t{uuid.uuid4().hex[:8]}", eviction=hs.Eviction(unseen_ticks=1))
                    for _ in range(2))  # fmt: skip
    a, b = (cluster.connect(token=cluster.token) for _ in range(2))
    keys = np.arange(30, dtype=np.int64)
    for client, cfg in ((a, mine), (b, theirs)):
        client.create_table(cfg)
        client.set_tag(cfg.name, f"run-{cfg.name}/1")
        for _ in range(2):
            client.pull(cfg.name, keys, train=True)
    before = b.stats()[theirs.name]
    a.advance_clock(3)
    assert a.shrink()[mine.name] == 30  # unseen for 3 ticks: all of a's rows go
    assert b.stats()[theirs.name] == before
    assert a.stats()[mine.name]["clock"] == before["clock"] + 3
    a.close(), b.close()


def test_every_limit_is_enforced_while_the_shard_keeps_serving(tmp_path):
    limits = ["--max_ids_per_call=1000", "--max_new_rows_per_call=500", "--max_tables=2",
              "--max_initial_capacity=100000", "--max_clock_advance=100"]  # fmt: skip
    c = Cluster(1, limits)
    client = c.connect(timeout=10, retries=0)
    cfg = _cfg("t", admission=hs.always())
    client.create_table(cfg)
    exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
    cases = [
        (lambda: client.pull("t", np.arange(1001, dtype=np.int64), train=False),
         "max_ids_per_call"),
        (lambda: client.pull("t", np.arange(600, dtype=np.int64), train=True),
         "max_new_rows_per_call"),
        (lambda: client.create_table(dataclasses.replace(_cfg("big"), initial_capacity=1 << 20)),
         "max_initial_capacity"),
        (lambda: client.advance_clock(101), "max_clock_advance"),
    ]  # fmt: skip
    for call, flag in cases:
        with pytest.raises(StoreError, match=flag) as e:
            call()
        assert e.value.code == exhausted
    client.create_table(_cfg("second"))
    with pytest.raises(StoreError, match="max_tables"):
        client.create_table(_cfg("third"))
    with pytest.raises(ValueError, match="exceed"):  # AdaGrad's g^2 would overflow float32
        client.push("t", np.array([1], np.int64), np.full((1, DIM), 3e38, np.float32))
    # Within the limits everything still works.
    client.pull("t", np.arange(400, dtype=np.int64), train=True)
    client.advance_clock(100)
    assert client.stats()["t"]["rows"] == 400 and client.stats()["t"]["clock"] == 100
    c.stop()


def _write_certs(d, *names):
    """A CA and, per name, a key and a certificate it signs (for 127.0.0.1)."""

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
        "-keyout", "ca.key", "-out", "ca.pem")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for n in names:
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={n}", "-keyout", f"{n}.key",
            "-out", f"{n}.csr")  # fmt: skip
        ssl("x509", "-req", "-in", f"{n}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "1", "-extfile", "san.ext", "-out", f"{n}.pem")  # fmt: skip
    return {p.name: p.read_bytes() for p in d.iterdir() if p.suffix in (".pem", ".key")}


def test_mutual_tls_refuses_clients_without_a_certificate_it_trusts(tmp_path):
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    ours.mkdir(), theirs.mkdir()
    pki = _write_certs(ours, "server", "client")
    rogue = _write_certs(theirs, "client")  # signed by another CA
    health = grpc.ssl_channel_credentials(pki["ca.pem"], pki["client.key"], pki["client.pem"])
    c = Cluster(1, [f"--tls_cert={ours / 'server.pem'}", f"--tls_key={ours / 'server.key'}",
                    f"--tls_client_ca={ours / 'ca.pem'}"], creds=health)  # fmt: skip
    try:
        good = c.connect(root_certificates=pki["ca.pem"], private_key=pki["client.key"],
                         certificate_chain=pki["client.pem"])  # fmt: skip
        good.create_table(_cfg("t", admission=hs.always()))
        good.pull("t", np.arange(5, dtype=np.int64), train=True)
        assert good.stats()["t"]["rows"] == 5
        for creds in ({"root_certificates": pki["ca.pem"]},  # no client certificate
                      {"root_certificates": pki["ca.pem"], "private_key": rogue["client.key"],
                       "certificate_chain": rogue["client.pem"]}):  # fmt: skip
            with pytest.raises(StoreError, match="UNAVAILABLE"):
                c.connect(timeout=3, retries=0, **creds).stats()
        assert good.stats()["t"]["rows"] == 5
    finally:
        c.stop()


def _files_under(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def test_snapshot_paths_are_confined_to_the_root(tmp_path):
    """Clients name snapshots relative to --snapshot_root: escapes are INVALID_ARGUMENT with
    nothing written outside, errors name the client's path only, Load reads only inside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "victim").mkdir()
    os.symlink(outside, root / "link")  # a symlink inside pointing out
    os.symlink(root, root / "self")  # and one to the root itself
    c = LocalCluster(1, snapshot_root=str(root), log_dir=str(tmp_path))
    try:
        stub, md = _raw(c, token=False)
        cfg = _cfg("t", admission=hs.always())
        client = ShardedStore(c.addresses, timeout=10, retries=0)  # relative names
        client.create_table(cfg)
        client.pull("t", np.arange(10, dtype=np.int64), train=True)
        escapes = ["../outside/x", str(outside / "x"), "link/x", "a/../../outside/x", "",
                   "/etc/x", ".", "link", "self"]  # fmt: skip
        for path in escapes:
            req = store_pb2.SnapshotRequest(table="t", path=path, kind="base")
            with pytest.raises(grpc.RpcError) as e:
                stub.Snapshot(req, metadata=md, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, e.value.details())
            assert str(root) not in e.value.details()
            load = store_pb2.LoadRequest(table="t", chains=[store_pb2.Chain(paths=[path])])
            with pytest.raises(grpc.RpcError) as e:
                stub.Load(load, metadata=md, timeout=10)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, e.value.details())
        assert _files_under(outside) == [] and client.stats()["t"]["rows"] == 10
        # Inside the root all works, by relative name or through a client that knows the root.
        saved = client.save("t", "run/base", "base")
        assert saved.paths == ["run/base/shard-0"]
        assert (root / "run" / "base" / "shard-0" / "manifest.json").exists()
        via_root = c.connect(timeout=10, retries=0)
        assert via_root.save("t", str(root / "run" / "b2"), "base").paths == [
            str(root / "run" / "b2" / "shard-0")]  # fmt: skip
        with pytest.raises(ValueError, match="not under the store's snapshot root"):
            via_root.save("t", str(outside / "b3"), "base")
        assert client.load("t", [saved.paths]) == 10
        # A damaged snapshot's error names the client's path, not the server's filesystem.
        (root / "run" / "base" / "shard-0" / "manifest.json").write_text("{}")
        with pytest.raises(ValueError) as e:
            client.load("t", [saved.paths])
        assert "run/base/shard-0" in str(e.value) and str(root) not in str(e.value)
        assert _files_under(outside) == [] and client.stats()["t"]["rows"] == 10
    finally:
        c.stop()


def test_a_shard_without_a_snapshot_root_writes_no_snapshots():
    server, *_, port = serve(0, 0, 1)  # in this process; no --snapshot_root
    try:
        stub = store_pb2_grpc.EmbeddingStoreStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        stub.CreateTable(store_pb2.CreateTableRequest(config_json=config_to_json(_cfg("t"))),
                         timeout=10)  # fmt: skip
        chains = [store_pb2.Chain(paths=["x"])]
        for method, req in [("Snapshot", store_pb2.SnapshotRequest(table="t", path="x")),
                            ("Load", store_pb2.LoadRequest(table="t", chains=chains))]:  # fmt: skip
            with pytest.raises(grpc.RpcError) as e:
                getattr(stub, method)(req, timeout=10)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "--snapshot_root" in e.value.details()
    finally:
        server.stop(0)


def test_a_flood_of_new_keys_never_starves_genuinely_new_ones(cluster):
    """A client floods a shard with 20,000 keys seen once (its pending table holds 1,000):
    the stalest counters give way, counted, and a key seen twice an hour later is admitted."""
    cfg = _cfg(f"t{uuid.uuid4().hex[:8]}", admission=hs.count_filter(2, max_pending=1000),
               eviction=hs.Eviction())  # fmt: skip
    client = cluster.connect(token=cluster.token)
    client.create_table(cfg)
    flood = np.arange(10**9, 10**9 + 20_000, dtype=np.int64)
    for batch in np.split(flood, 20):
        client.pull(cfg.name, batch, train=True)
    stats = client.stats()[cfg.name]
    assert stats["rows"] == 0 and stats["displaced_pending"] >= 18_000
    client.advance_clock(1)
    genuine = np.array([42], np.int64)
    client.pull(cfg.name, genuine, train=True)
    client.pull(cfg.name, flood[-500:] + 10**6, train=True)  # the flood goes on meanwhile
    client.pull(cfg.name, genuine, train=True)
    assert client.stats()[cfg.name]["rows"] == 1
    assert client.pull(cfg.name, genuine, train=False, with_counts=True)[0, 0] == 2  # shows
    client.close()
