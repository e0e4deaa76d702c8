"""Checkpoints and resume: a stopped (or kill -9'd) run continues exactly where it stopped."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx

import hoststore as hs
from jaxstream import config, train
from jaxstream.checkpoint import CheckpointManager, StoreUnavailable
from jaxstream.data.synthetic import StreamConfig, generate
from tests.conftest import metric_lines

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DETERMINISTIC = ("partition", "progressive_auc", "train_auc", "logloss", "copc", "table_rows",
                 "pending", "admitted", "evicted", "cumulative_auc")  # fmt: skip


def _cfg(root, **kw):
    stream = StreamConfig(hours=5, rows_per_hour=1500, max_vocab=3000, start="20260101")
    if not os.path.isdir(root):
        generate(root, stream)
    base = config.smoke_config()
    return dataclasses.replace(base, data_root=root, synthetic=stream, staleness=0,
                               admission="count_filter:2", eviction="unseen:2",
                               shrink_every="partition", **kw)  # fmt: skip


def _lines(workdir):
    return metric_lines(os.path.join(workdir, "metrics.jsonl"), DETERMINISTIC)


def _final_store(workdir, cfg):
    spec = train.feature_spec(cfg)
    graphdef, params = nnx.split(train.model_of(cfg, spec))
    import optax

    tx = getattr(optax, cfg.dense_optimizer)(cfg.dense_learning_rate)
    r = CheckpointManager(workdir).restore(params, tx.init(params), hs.LocalStore(spec.tables))
    rows = r.store.table("embedding").export_rows()
    order = np.argsort(rows["key"])
    return r, {k: v[order] for k, v in rows.items()}


def _assert_same_run(work_a, work_b, cfg):
    assert _lines(work_a) == _lines(work_b)
    ra, rows_a = _final_store(work_a, cfg)
    rb, rows_b = _final_store(work_b, cfg)
    assert ra.cursor == rb.cursor
    for k in rows_a:
        np.testing.assert_array_equal(rows_a[k], rows_b[k], err_msg=k)
    for a, b in zip(
        np.asarray(ra.params["mlp"]["layers"][0]["kernel"][...]).ravel(),
        np.asarray(rb.params["mlp"]["layers"][0]["kernel"][...]).ravel(),
        strict=True,
    ):
        assert a == b


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """(config, workdir) of the uninterrupted 5-hour reference run, trained once per test
    process; the tests compare with it and read its stream, and never write to either."""
    base = tmp_path_factory.mktemp("whole")
    cfg = _cfg(str(base / "data"))
    train.train_and_evaluate(cfg, str(base / "run"))
    return cfg, str(base / "run")


def test_stop_and_resume_equals_an_uninterrupted_run(tmp_path, whole):
    cfg, reference = whole
    part = str(tmp_path / "parts")
    train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=2), part)
    s = train.train_and_evaluate(cfg, part)  # resumes after partition 2
    assert s["partitions"] == 5
    _assert_same_run(reference, part, cfg)


@pytest.mark.parametrize("pass_batches", [0, 3])
def test_a_run_with_a_disk_tier_equals_an_all_ram_run_across_a_resume(tmp_path, pass_batches,
                                                                      whole):  # fmt: skip
    """A RAM budget of a few hundred rows (most of the table on disk), stopped after two
    hours and resumed: the same metrics, rows and dense weights as the all-RAM run; also in
    pass mode (3 batches a pass, the next begun while one trains)."""
    cfg, reference = whole
    if pass_batches:  # (the reference run trains per batch)
        cfg = dataclasses.replace(cfg, pass_batches=pass_batches)
        reference = str(tmp_path / "whole")
        train.train_and_evaluate(cfg, reference)
    tiered = dataclasses.replace(cfg, store_memory_mb=0.05, store_disk_dir=str(tmp_path / "disk"))
    part = str(tmp_path / "tiered")
    train.train_and_evaluate(dataclasses.replace(tiered, max_partitions=2), part)
    train.train_and_evaluate(tiered, part)
    _assert_same_run(reference, part, cfg)
    lines = metric_lines(os.path.join(part, "metrics.jsonl"), ("table_rows", "disk_rows"))
    assert all(x["disk_rows"] > x["table_rows"] / 2 for x in lines), lines  # mostly on disk
    assert os.listdir(tmp_path / "disk") == []  # the scratch tier is gone with its store


def test_damaged_newest_checkpoint_falls_back(tmp_path, caplog):
    root = str(tmp_path / "data")
    cfg = _cfg(root, max_partitions=3)
    work = str(tmp_path / "w")
    train.train_and_evaluate(cfg, work)
    ckpt = os.path.join(work, "checkpoints")
    os.makedirs(os.path.join(ckpt, "000004", "dense"))  # a save killed before its meta.json
    emb = os.path.join(ckpt, "000003", "store", "embedding", "rows.emb.npy")
    with open(emb, "r+b") as f:
        f.seek(-3, 2)
        f.write(b"xyz")
    with caplog.at_level("WARNING"):
        s = train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=1), work)
    assert "checkpoint 3 is unusable" in caplog.text and "sha256 mismatch" in caplog.text
    lines = _lines(work)
    assert [x["partition"] for x in lines] == ["20260101/00", "20260101/01", "20260101/02"]
    assert s["cursor"] == "20260101/02"  # partition 3 was trained again, none skipped
    # The damaged checkpoint that the retrained step replaced is kept aside, as it was.
    (aside,) = [d for d in os.listdir(ckpt) if d.startswith("000003.unusable-")]
    with open(os.path.join(ckpt, aside, "store", "embedding", "rows.emb.npy"), "rb") as f:
        assert f.read()[-3:] == b"xyz"


def _dense_of_the_previous_step(cfg, work, tmp_path):
    ckpt = os.path.join(work, "checkpoints")
    shutil.rmtree(os.path.join(ckpt, "000003", "dense"))
    shutil.copytree(os.path.join(ckpt, "000002", "dense"), os.path.join(ckpt, "000003", "dense"))


def _store_of_a_forked_run(cfg, work, tmp_path):
    """A copy of the workdir at checkpoint 2 trains the next hour otherwise (staleness 1):
    its step-3 delta follows the same parent, verifies, and holds other rows."""
    fork = str(tmp_path / "fork")
    shutil.copytree(work, fork)
    shutil.rmtree(os.path.join(fork, "checkpoints", "000003"))
    train.train_and_evaluate(dataclasses.replace(cfg, staleness=1, max_partitions=1), fork)
    dst = os.path.join(work, "checkpoints", "000003", "store")
    shutil.rmtree(dst)
    shutil.copytree(os.path.join(fork, "checkpoints", "000003", "store"), dst)


@pytest.mark.parametrize(
    "swap, why",
    [(_dense_of_the_previous_step, "do not match their sha256"),
     (_store_of_a_forked_run, "but meta.json committed")],
)  # fmt: skip
def test_a_checkpoint_holding_files_it_did_not_commit_is_refused(tmp_path, caplog, swap, why):
    """Files valid on their own but not the ones meta.json committed (Orbax would load the
    dense state, the store the snapshot chain): the checkpoint is refused, the previous one
    restored and the hour trained again."""
    cfg = _cfg(str(tmp_path / "data"), max_partitions=3)
    work = str(tmp_path / "w")
    train.train_and_evaluate(cfg, work)
    swap(cfg, work, tmp_path)
    with caplog.at_level("WARNING"):
        s = train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=1), work)
    assert "checkpoint 3 is unusable" in caplog.text and why in caplog.text
    assert s["cursor"] == "20260101/02"
    assert [x["partition"] for x in _lines(work)] == ["20260101/00", "20260101/01",
                                                      "20260101/02"]  # fmt: skip


class _UnavailableStore(hs.LocalStore):
    """A store whose loads fail as a shard server's do when it is down."""

    def load(self, table, chains):
        import grpc

        raise hs.StoreError("shard 1 at 127.0.0.1:1: Load failed: UNAVAILABLE",
                            code=grpc.StatusCode.UNAVAILABLE)  # fmt: skip


def _tree(path):
    out = {}
    for d, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(d, name), "rb") as f:
                out[os.path.relpath(os.path.join(d, name), path)] = f.read()
    return out


def test_a_store_that_cannot_load_stops_the_run_instead_of_falling_back(tmp_path):
    """A shard down at restore is not a damaged checkpoint: falling back to an older one
    would train the hours again and replace the newest checkpoint. The run stops with one
    line and changes nothing; with the store back, it resumes from the newest."""
    cfg = _cfg(str(tmp_path / "data"), max_partitions=2)
    work = str(tmp_path / "w")
    train.train_and_evaluate(cfg, work)
    before = _tree(work)
    spec = train.feature_spec(cfg)
    with pytest.raises(StoreUnavailable,
                       match=r"checkpoint 2 could not be loaded into the store: shard 1 at "
                             r".*UNAVAILABLE; nothing was changed"):  # fmt: skip
        train.train_and_evaluate(cfg, work, store=_UnavailableStore(spec.tables))
    assert _tree(work) == before
    s = train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=1), work)
    assert [x["partition"] for x in _lines(work)] == ["20260101/00", "20260101/01",
                                                      "20260101/02"]  # fmt: skip
    assert s["cursor"] == "20260101/02"


def _cli_of(cfg, tmp_path):
    """(workdir, command): the CLI command that trains what ``cfg`` (the reference run's
    config) trains, into ``tmp_path/killed``."""
    work = str(tmp_path / "killed")
    cmd = [sys.executable, "experiments/train_stream.py", "--smoke",
           f"--data_root={cfg.data_root}",
           f"--workdir={work}", "--staleness=0", "--admission=count_filter:2",
           "--eviction=unseen:2", "--shrink_every=partition"]  # fmt: skip
    return work, cmd


@pytest.mark.parametrize(
    "kill_when, tier",
    [
        (("after checkpoint 2 commits", os.path.join("000002", "meta.json")), False),
        # The dense state of step 3 is written first: its folder appearing means the save of
        # step 3 is under way (the store snapshots and meta.json come after).
        (("during the save of checkpoint 3", os.path.join("000003", "dense")), False),
        # With a disk tier: the killed process's cold rows are scratch, the checkpoint
        # restores them, and the next process removes what the killed one left on disk.
        (("during the save of checkpoint 3", os.path.join("000003", "dense")), True),
    ],
    ids=["after_commit", "during_save", "during_save_disk_tier"],
)
def test_kill_9_then_resume(tmp_path, kill_when, tier, killable_env, whole):
    cfg, reference = whole
    work, cmd = _cli_of(cfg, tmp_path)
    disk = tmp_path / "disk"
    if tier:
        cmd += ["--store_memory_mb=0.05", f"--store_disk_dir={disk}"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=killable_env)  # fmt: skip
    marker = os.path.join(work, "checkpoints", kill_when[1])
    deadline = time.time() + 240
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env=killable_env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from checkpoint" in done.stdout
    _assert_same_run(reference, work, cfg)
    if tier:
        assert os.listdir(disk) == []


@pytest.mark.reliability
def test_kill_9_at_random_points_leaves_one_metrics_line_per_partition(
    tmp_path, request, killable_env, whole
):
    """The trainer is killed ``--kills`` times (default 5) at random moments of its work and
    restarted each time; the end result equals an uninterrupted run: every partition
    trained once, one metrics line each, the same table."""
    import random

    cfg, reference = whole
    work, cmd = _cli_of(cfg, tmp_path)
    rng, kills = random.Random(0), 0
    while kills < request.config.getoption("--kills"):
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=killable_env)  # fmt: skip
        proc.stdout.readline()  # the header: set up, about to train
        time.sleep(rng.uniform(0.0, 2.5))
        if proc.poll() is not None:
            break  # it finished (or had nothing left) before the kill
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        kills += 1
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                          env=killable_env)  # fmt: skip
    assert done.returncode == 0 or "no ready partition" in done.stderr, done.stderr[-2000:]
    assert kills >= 3, kills
    _assert_same_run(reference, work, cfg)


def test_a_remote_store_restored_into_another_shard_count_continues_its_chain(tmp_path, whole):
    """2 shard servers train 2 hours; 1 shard server resumes (both shards' chains load into
    it) and trains 3 more: its first checkpoint is a base (a delta has no parent of its
    layout), then deltas again; the run equals an uninterrupted in-process one."""
    from jaxstream.serving import Predictor
    from tests.conftest import Cluster

    cfg, straight = whole
    work = str(tmp_path / "work")
    two = Cluster(2)
    try:
        train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=2), work,
                                 store=two.connect())  # fmt: skip
    finally:
        two.stop()
    one = Cluster(1)
    try:
        summary = train.train_and_evaluate(cfg, work, store=one.connect())
    finally:
        one.stop()
    assert summary["partitions"] == 5 and _lines(work) == _lines(straight)
    ckpt = CheckpointManager(work)
    metas = [ckpt.read_meta(s) for s in ckpt.steps()]
    layout = [(m["step"], m["base_step"], [len(c) for c in m["store_chains"]["embedding"]])
              for m in metas]  # fmt: skip
    assert layout[-3:] == [(3, 3, [1]), (4, 3, [2]), (5, 3, [3])], layout
    # Serving reads the new chain and scores as the uninterrupted run does.
    examples, _ = train.read_path(cfg, os.path.join(cfg.data_root, "20260101", "04"))
    np.testing.assert_allclose(
        Predictor(work).predict(examples),
        Predictor(straight).predict(examples),
        rtol=1e-5,
        atol=1e-6,
    )
