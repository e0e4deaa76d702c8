"""Serving from checkpoints, refresh without restart, retention of bases, the predict CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import hoststore as hs
from hoststore.store import LocalStore
from jaxstream import config, train
from jaxstream.checkpoint import CheckpointManager
from jaxstream.data.synthetic import StreamConfig, generate
from jaxstream.metrics import BinaryMetrics
from jaxstream.serving import Predictor
from jaxstream.stream import Partition

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize("cvm", [False, True], ids=["plain", "cvm"])
def test_predictor_matches_the_trainers_eval_and_refreshes(tmp_path, cvm):
    root = str(tmp_path / "data")
    stream = StreamConfig(hours=4, rows_per_hour=1500, max_vocab=3000)
    generate(root, stream)
    cfg = dataclasses.replace(config.smoke_config(), data_root=root, synthetic=stream,
                              staleness=0, admission="count_filter:2", cvm=cvm)  # fmt: skip
    work = str(tmp_path / "w")
    train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=2), work)

    predictor = Predictor(work)
    assert predictor.step == 2 and predictor.cursor == "20260101/01"
    part = Partition("20260101/02", os.path.join(root, "20260101", "02"), None)
    examples, _ = train.read_partition(cfg, part)
    before = predictor.predict(examples)
    m = BinaryMetrics()
    m.update(examples.labels, before)

    train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=1), work)  # trains hour 2
    rec = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))][-1]
    assert rec["partition"] == "20260101/02"
    # The trainer evaluated hour 2 with the state of checkpoint 2: the predictor's scores.
    assert m.auc() == rec["progressive_auc"]
    assert abs(m.logloss() - rec["logloss"]) < 1e-9

    assert predictor.refresh() and predictor.step == 3
    after = predictor.predict(examples)
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, Predictor(work).predict(examples))
    assert not predictor.refresh()

    out = subprocess.run(
        [sys.executable, "experiments/predict.py", f"--workdir={work}",
         f"--partition={part.path}"], cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["checkpoint"] == 3 and res["examples"] == len(examples)
    # One file, scores out: one line per example, in order, equal to the Predictor's.
    scores = tmp_path / "scores.csv"
    out = subprocess.run(
        [sys.executable, "experiments/predict.py", f"--workdir={work}",
         f"--partition={os.path.join(part.path, 'part-00000')}", f"--output={scores}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line.split(",") for line in scores.read_text().splitlines()]
    assert rows[0] == ["file", "line", "label", "prediction"] and len(rows) == len(examples) + 1
    np.testing.assert_array_equal([float(r[2]) for r in rows[1:]], examples.labels)
    np.testing.assert_array_equal(np.array([r[3] for r in rows[1:]], np.float32), after)
    assert [int(r[1]) for r in rows[1:4]] == [1, 2, 3]
    if cvm:
        return  # the CLI's bad inputs are checked once, on the plain run
    # Nothing to score, or nowhere to write: one error line, exit 1, no scores.
    (tmp_path / "junk").write_text("not a criteo line\n")
    with pytest.raises(ValueError, match=r"junk: no example to score \(1 of 1 lines malformed; "
                       "the model was trained on format=criteo\\)"):  # fmt: skip
        predictor.read(str(tmp_path / "junk"))
    out = subprocess.run([sys.executable, "experiments/predict.py", f"--workdir={work}",
                          f"--partition={part.path}", f"--output={tmp_path / 'junk' / 'x.csv'}"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 1 and out.stdout == "", out.stderr[-2000:]
    last = out.stderr.strip().splitlines()[-1]
    assert last == f"error: --output={tmp_path / 'junk' / 'x.csv'}: Not a directory"


def test_keeps_the_newest_bases_and_their_deltas(tmp_path):
    mgr = CheckpointManager(str(tmp_path), keep_bases=2)
    store = LocalStore([hs.TableConfig("t", 2)])
    params = {"w": jnp.ones(3)}
    for step, base in enumerate([True, False, False, True, False, True, False], start=1):
        store.pull("t", np.array([step], np.int64), train=True)
        mgr.save(step, params, (), store, f"c{step}", BinaryMetrics(), {}, base=base)
    assert mgr.steps() == [4, 5, 6, 7]
    r = mgr.restore(params, (), LocalStore([hs.TableConfig("t", 2)]))
    assert r.step == 7 and len(r.store.table("t")) == 7


def test_the_predictor_serves_a_grpc_store_run_like_an_in_process_one(tmp_path, cluster):
    """A checkpoint of a gRPC-store run holds one snapshot chain per shard server; the
    Predictor merges them and scores exactly as it does for the same run in process."""

    root = str(tmp_path / "data")
    stream = StreamConfig(hours=3, rows_per_hour=1500, max_vocab=3000)
    generate(root, stream)
    cfg = dataclasses.replace(config.smoke_config(), data_root=root, synthetic=stream,
                              staleness=0, admission="count_filter:2")  # fmt: skip
    spec = train.feature_spec(cfg)
    name = f"emb{os.getpid()}"  # the module's cluster is shared: a table of this test's own
    spec = dataclasses.replace(spec, tables=(dataclasses.replace(spec.tables[0], name=name),),
                               slots=tuple(dataclasses.replace(s, table=name)
                                           for s in spec.slots))  # fmt: skip
    remote = cluster.connect(token=cluster.token)
    train.train_and_evaluate(cfg, str(tmp_path / "grpc"), features=spec, store=remote)
    train.train_and_evaluate(cfg, str(tmp_path / "local"), features=spec)
    part = Partition("20260101/02", os.path.join(root, "20260101", "02"), None)
    examples, _ = train.read_partition(cfg, part)
    served = [Predictor(str(tmp_path / w), features=spec).predict(examples)
              for w in ("grpc", "local")]  # fmt: skip
    np.testing.assert_array_equal(served[0], served[1])
    remote.close()


def test_the_predictor_serves_the_newest_checkpoint_that_verifies(tmp_path, caplog):
    """A damaged newest checkpoint is skipped (warned once) and the one before it served,
    whole: every file of a step is verified before any is applied. When the trainer
    commits that step anew, the predictor serves it."""
    root = str(tmp_path / "data")
    generate(root, StreamConfig(hours=4, rows_per_hour=1000, max_vocab=2000))
    cfg = dataclasses.replace(config.smoke_config(), data_root=root, staleness=0,
                              max_partitions=2)  # fmt: skip
    work = str(tmp_path / "w")
    train.train_and_evaluate(cfg, work)
    predictor = Predictor(work)
    train.train_and_evaluate(cfg, work)  # steps 3 and 4
    reference = str(tmp_path / "at_step_3")
    shutil.copytree(work, reference, ignore=shutil.ignore_patterns("000004"))
    part = Partition("20260101/03", os.path.join(root, "20260101", "03"), None)
    examples, _ = train.read_partition(cfg, part)
    want = Predictor(reference).predict(examples)
    emb = os.path.join(work, "checkpoints", "000004", "store", "embedding", "rows.emb.npy")
    with open(emb, "r+b") as f:
        f.seek(-3, 2)
        f.write(b"xyz")
    with caplog.at_level("WARNING"):
        assert predictor.refresh() and predictor.step == 3
        assert not predictor.refresh() and predictor.step == 3
    assert caplog.text.count("checkpoint 4 is not served") == 1
    assert [s for s, _ in predictor.unusable] == [4] and "sha256" in predictor.unusable[0][1]
    np.testing.assert_array_equal(predictor.predict(examples), want)
    meta = os.path.join(work, "checkpoints", "000004", "meta.json")
    with open(meta, "r+b") as f:
        f.seek(-2, 2)
        f.write(b"0}")
    fresh = Predictor(work)  # its newest meta.json altered too
    assert fresh.step == 3 and [s for s, _ in fresh.unusable] == [4]
    np.testing.assert_array_equal(fresh.predict(examples), want)
    out = subprocess.run([sys.executable, "experiments/predict.py", f"--workdir={work}",
                          f"--partition={part.path}"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0 and json.loads(out.stdout)["checkpoint"] == 3, out.stderr[-2000:]
    assert "warning: checkpoint 4 does not verify, not used: " in out.stderr
    train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=1), work)  # step 4 anew
    assert predictor.refresh() and predictor.step == 4
    np.testing.assert_array_equal(predictor.predict(examples), Predictor(work).predict(examples))
