"""A streaming run never lies and never loses its history, end to end through the CLI (real
processes, real files): a changed config is refused with the workdir untouched, a second
trainer is refused, nothing to train is an error, an altered meta.json is never trusted."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import hoststore as hs
from jaxstream import config, train
from jaxstream import workdir as workdir_lib
from jaxstream.data.synthetic import StreamConfig, generate
from tests.conftest import REPO


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("stream"))
    generate(root, StreamConfig(hours=3, rows_per_hour=1000, max_vocab=2000))
    return root


def _cli(*args, cwd=REPO):
    cmd = [sys.executable, os.path.join(REPO, "experiments", "train_stream.py"), "--smoke",
           "--staleness=0", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd)


def _tree_digest(root: str) -> dict[str, str]:
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            p = os.path.join(d, f)
            out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out


def _error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def test_a_changed_config_is_refused_and_the_workdir_is_untouched(tmp_path, stream):
    work = str(tmp_path / "w")
    first = _cli(f"--data_root={stream}", f"--workdir={work}", "--max_partitions=2")
    assert first.returncode == 0, first.stderr[-3000:]
    before = _tree_digest(work)
    again = _cli(f"--data_root={stream}", f"--workdir={work}", "--embedding_dim=16", "--cvm")
    assert again.returncode == 1
    line = _error_line(again)
    assert "embedding_dim: 8 -> 16" in line and "cvm: False -> True" in line
    assert _tree_digest(work) == before  # nothing touched
    # Fields that change neither the model nor the data may change on resume.
    resumed = _cli(f"--data_root={stream}", f"--workdir={work}", "--max_partitions=5")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint 2" in resumed.stdout
    # Starting over is explicit: the old history is moved aside, never overwritten.
    over = _cli(f"--data_root={stream}", f"--workdir={work}", "--embedding_dim=16",
                "--start_over")  # fmt: skip
    assert over.returncode == 0, over.stderr[-3000:]
    assert "moved the previous history to" in over.stdout
    (old,) = [d for d in os.listdir(work) if d.startswith("history-")]
    assert len(open(os.path.join(work, old, "metrics.jsonl")).readlines()) == 3
    assert len(open(os.path.join(work, "metrics.jsonl")).readlines()) == 3


@pytest.mark.parametrize(
    "field, where, reason",
    [
        ("workdir", "file", "File exists"),
        ("workdir", "file/below", "Not a directory"),
        ("metrics_file", "file/m.jsonl", "{tmp}/file is not a directory"),
        ("metrics_file", "dir", "Is a directory"),
        ("store_disk_dir", "file", "File exists"),
    ],
)  # fmt: skip
def test_a_path_that_cannot_be_used_is_one_error_line_before_any_work(tmp_path, stream, field,
                                                                     where, reason):  # fmt: skip
    """In process (the CLI prints a RunError as its one error line: see the tests above)."""
    (tmp_path / "file").write_text("not a directory\n")
    (tmp_path / "dir").mkdir()
    path, work = str(tmp_path / where), str(tmp_path / "w")
    cfg = dataclasses.replace(config.smoke_config(), data_root=stream)
    if field == "workdir":
        work = path
    else:
        extra = {"store_memory_mb": 1.0} if field == "store_disk_dir" else {}
        cfg = dataclasses.replace(cfg, **{field: path}, **extra)
    with pytest.raises(workdir_lib.RunError) as e:
        train.train_and_evaluate(cfg, work)
    assert str(e.value) == f"{field} {path}: {reason.format(tmp=tmp_path)}"
    assert (tmp_path / "file").read_text() == "not a directory\n"
    assert not (tmp_path / "w" / "checkpoints").exists()  # nothing trained


def test_a_second_trainer_on_the_workdir_is_refused(tmp_path, stream):
    work = tmp_path / "w"
    work.mkdir()
    with workdir_lib.lock(str(work)):
        proc = _cli(f"--data_root={stream}", f"--workdir={work}")
    assert proc.returncode == 1
    assert f"in use by another trainer (pid {os.getpid()})" in _error_line(proc)
    assert not (work / "metrics.jsonl").exists()


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda tmp, stream: ["--data_root=/nonexistent/stream"], "no such directory"),
        (lambda tmp, stream: [f"--data_root={_loose_files(tmp)}"], "no ready partition"),
        (lambda tmp, stream: [f"--data_root={stream}", "--format=avazu"], "lines malformed"),
        (lambda tmp, stream: [f"--data_root={_empty_hour(tmp)}"], "part files hold no line"),
    ],
    ids=["missing_root", "loose_files", "wrong_format", "empty_hour"],
)
def test_nothing_to_train_exits_non_zero_and_commits_nothing(tmp_path, stream, setup, message):
    work = tmp_path / "w"
    proc = _cli(*setup(tmp_path, stream), f"--workdir={work}")
    assert proc.returncode == 1 and message in _error_line(proc)
    ckpts = work / "checkpoints"
    assert not ckpts.exists() or not [d for d in os.listdir(ckpts) if d.isdigit()]


def _empty_hour(tmp) -> str:
    root = tmp / "empty"
    (root / "20260101" / "00").mkdir(parents=True)
    (root / "20260101" / "00" / "part-00000").write_text("")
    (root / "20260101" / "00" / "_SUCCESS").write_text("")
    return str(root)


def _loose_files(tmp) -> str:
    root = tmp / "loose"
    root.mkdir()
    (root / "day1.txt").write_text("1\t2\t3\n")
    return str(root)


def test_a_relative_workdir_works_and_an_altered_meta_is_never_trusted(tmp_path, stream):
    first = _cli(f"--data_root={stream}", "--workdir=rel", "--max_partitions=2", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    meta_path = tmp_path / "rel" / "checkpoints" / "000002" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert meta["cursor"] == "20260101/01"
    # A one-byte edit of the cursor: the checkpoint is refused, the previous one is used,
    # and the hour is trained again (one metrics line per partition, none skipped).
    meta_path.write_text(meta_path.read_text().replace("20260101/01", "20260101/02"))
    again = _cli(f"--data_root={stream}", "--workdir=rel", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resumed from checkpoint 1 after partition 20260101/00" in again.stdout
    lines = [json.loads(x)["partition"] for x in open(tmp_path / "rel" / "metrics.jsonl")]
    assert lines == ["20260101/00", "20260101/01", "20260101/02"]
    # Every checkpoint altered: none restores, and starting over would overwrite them and
    # the metrics they committed, so the run is refused and changes nothing.
    for meta_path in (tmp_path / "rel" / "checkpoints").glob("*/meta.json"):
        meta_path.write_text(meta_path.read_text().replace('"run_id": "', '"run_id": "x'))
    before = _tree_digest(str(tmp_path / "rel"))
    before.pop(".lock")  # the pid of the trainer that holds the workdir
    refused = _cli(f"--data_root={stream}", "--workdir=rel", cwd=tmp_path)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "3 checkpoint(s) under " in _error_line(refused) and "none of which restores" in (
        _error_line(refused))  # fmt: skip
    after = _tree_digest(str(tmp_path / "rel"))
    after.pop(".lock")
    assert after == before


def test_a_late_hour_is_trained_when_it_arrives(tmp_path):
    root = tmp_path / "stream"
    generate(str(root), StreamConfig(hours=3, rows_per_hour=1000, max_vocab=2000))
    marker = root / "20260101" / "01" / "_SUCCESS"
    marker.unlink()  # hour 01 is late
    work = tmp_path / "w"
    first = _cli(f"--data_root={root}", f"--workdir={work}")
    assert first.returncode == 0, first.stderr[-3000:]
    recs = [json.loads(x) for x in open(work / "metrics.jsonl")]
    assert [r["partition"] for r in recs] == ["20260101/00", "20260101/02"]
    assert any("20260101/01" in w for r in recs for w in r["source_warnings"])
    marker.touch()
    second = _cli(f"--data_root={root}", f"--workdir={work}")
    assert second.returncode == 0, second.stderr[-3000:]
    recs = [json.loads(x)["partition"] for x in open(work / "metrics.jsonl")]
    assert recs == ["20260101/00", "20260101/02", "20260101/01"]  # each once, none skipped
    third = _cli(f"--data_root={root}", f"--workdir={work}")
    assert third.returncode == 1 and "no ready partition" in _error_line(third)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--store_snapshot_root is needed with --store_addresses"),
        (["--store_snapshot_root=/elsewhere"], "is not under the store's snapshot root"),
        (["--store_snapshot_root={tmp}", "--store_token_file={tmp}/token"],
         "--store_token_file {tmp}/token is empty: refusing to connect without the token"),
    ],
)  # fmt: skip
def test_a_remote_store_without_checkpoints_or_its_token_is_refused(tmp_path, stream, extra,
                                                                    message):  # fmt: skip
    """The shard servers write the store's checkpoints under their snapshot root: a run that
    could not checkpoint there stops before any work (no server is even contacted); so does
    one whose token file is blank (it would connect without authentication)."""
    work = tmp_path / "w"
    (tmp_path / "token").write_text(" \n")
    extra = [x.format(tmp=tmp_path) for x in extra]
    message = message.format(tmp=tmp_path)
    proc = _cli(f"--data_root={stream}", f"--workdir={work}",
                "--store_addresses=127.0.0.1:1", *extra)  # fmt: skip
    assert proc.returncode == 2 and message in _error_line(proc)
    assert not work.exists() or not any(work.iterdir())


def _with_file_size_limit(limit: int, cmd: list[str]) -> list[str]:
    """``cmd`` run with writes past ``limit`` bytes in one file failing (EFBIG, as Python
    ignores SIGXFSZ): a disk that fills up in the middle of a checkpoint. A small shim sets
    the limit and execs ``cmd`` (no fork of this process, which has JAX's threads)."""
    shim = ("import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "os.execv(sys.argv[1], sys.argv[1:])")  # fmt: skip
    return [sys.executable, "-c", shim, *cmd]


_CHECKPOINT_FAILED = (
    "checkpoint 1 (after 20260101/00) could not be written: ",
    "File too large",
    "; nothing of it is committed, a rerun resumes from the first partition",
)


@pytest.mark.parametrize(
    "model, limit, says, rerun_drops",
    [
        ("lr", 64 << 10, _CHECKPOINT_FAILED, "(20260101/00)"),  # the store's snapshot fails
        ("dnn", 64 << 10, _CHECKPOINT_FAILED, None),  # the dense state (Orbax) fails first
        ("lr", 512, ("metrics_file ", "the record of 20260101/00 could not be written: File "
                     "too large", ""), "(an unreadable line)"),  # half a metrics line written
    ],
)  # fmt: skip
def test_a_file_that_cannot_be_written_is_one_line_then_resumed(tmp_path, stream, model, limit,
                                                                says, rerun_drops):  # fmt: skip
    """A file fills up in the middle of a partition's commit (a full disk): exit 1 naming
    what failed, nothing committed; the rerun trains the hour again and the metrics keep one
    line per partition (the uncommitted attempt's line used to stay, and the rerun added a
    second)."""
    work = str(tmp_path / "w")
    cmd = [sys.executable, os.path.join(REPO, "experiments", "train_stream.py"), "--smoke",
           "--staleness=0", f"--model={model}", f"--data_root={stream}", f"--workdir={work}",
           "--max_partitions=2"]  # fmt: skip
    # Not the suite's shared compilation cache: an entry cut short by the limit would make
    # every later reader of it warn.
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    failed = subprocess.run(_with_file_size_limit(limit, cmd), capture_output=True, text=True,
                            timeout=300, cwd=REPO, env=env)  # fmt: skip
    assert failed.returncode == 1, failed.stderr[-3000:]
    line = _error_line(failed)
    assert line == failed.stderr.strip().splitlines()[-1]
    start, middle, end = says
    assert line.startswith("error: " + start) and middle in line and line.endswith(end), line
    assert "Traceback" not in failed.stderr, failed.stderr[-3000:]
    assert not os.path.exists(os.path.join(work, "checkpoints", "000001", "meta.json"))
    if rerun_drops is None:
        return
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"dropped 1 line(s) of partitions no checkpoint committed {rerun_drops}" in again.stderr
    lines = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))]
    assert [x["partition"] for x in lines] == ["20260101/00", "20260101/01"]


def _assert_same_rows(got, want, spec):
    """Every row of the first table of two stores, every column."""
    a, b = (s.table(spec.tables[0].name).export_rows() for s in (got, want))
    oa, ob = a["key"].argsort(), b["key"].argsort()
    for k in b:
        np.testing.assert_array_equal(a[k][oa], b[k][ob], err_msg=k)


def test_a_day_boundary_partition_that_fails_is_not_shrunk_twice_on_rerun(tmp_path):
    """A store that outlives the trainer (shard servers) must not keep the day boundary's
    shrink of a partition whose run failed: the rerun restores from the checkpoint before
    it and shrinks once, as an uninterrupted run does."""
    root = tmp_path / "stream"
    generate(str(root), StreamConfig(hours=2, rows_per_hour=1000, max_vocab=2000))
    os.makedirs(root / "20260102")
    os.rename(root / "20260101" / "01", root / "20260102" / "00")  # a day boundary
    part = root / "20260102" / "00" / "part-00000"
    good = part.read_bytes()
    cfg = dataclasses.replace(config.smoke_config(), data_root=str(root), staleness=0,
                              eviction="shrink_decay:0.5", shrink_every="day")  # fmt: skip
    spec = train.feature_spec(cfg)

    kept = hs.LocalStore()  # stands in for shard servers that outlive the trainer
    train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=1), str(tmp_path / "w"),
                             store=kept)  # fmt: skip
    part.write_text("garbage\n" * 50)
    with pytest.raises(train.TooManyMalformed):
        train.train_and_evaluate(cfg, str(tmp_path / "w"), store=kept)
    part.write_bytes(good)
    train.train_and_evaluate(cfg, str(tmp_path / "w"), store=kept)
    fresh = hs.LocalStore()
    train.train_and_evaluate(cfg, str(tmp_path / "ref"), store=fresh)
    _assert_same_rows(kept, fresh, spec)


def test_a_store_left_at_another_runs_checkpoint_is_reloaded(tmp_path):
    """Shard servers that another workdir's run left at its checkpoint 1 (their tag names
    that run and step) hold that run's rows: a run resuming from its own checkpoint 1 loads
    its own, and ends as it would on a fresh store."""
    root = tmp_path / "stream"
    generate(str(root), StreamConfig(hours=2, rows_per_hour=1000, max_vocab=2000))
    cfg = dataclasses.replace(config.smoke_config(), data_root=str(root), staleness=0,
                              max_partitions=1)  # fmt: skip
    spec = train.feature_spec(cfg)

    kept = hs.LocalStore()  # stands in for shard servers that outlive the trainer
    generate(str(tmp_path / "other_stream"),
             StreamConfig(hours=1, rows_per_hour=1000, max_vocab=2000, seed=1))  # fmt: skip
    other = dataclasses.replace(cfg, data_root=str(tmp_path / "other_stream"))
    train.train_and_evaluate(other, str(tmp_path / "other"), store=kept)
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
    shutil.copytree(tmp_path / "w", tmp_path / "ref")
    train.train_and_evaluate(cfg, str(tmp_path / "w"), store=kept)
    fresh = hs.LocalStore()
    train.train_and_evaluate(cfg, str(tmp_path / "ref"), store=fresh)
    _assert_same_rows(kept, fresh, spec)
