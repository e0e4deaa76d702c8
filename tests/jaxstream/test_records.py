"""What a run records: TensorBoard scalars under grouped tags, read back from the event file;
the metrics lines a resumed run keeps."""

from __future__ import annotations

import glob
import json
import os

import pytest
from tensorboardX.proto import event_pb2

from jaxstream import records, train
from tests.conftest import smoke_stream


def _events(path):
    """The (tag, step, value) scalars of one TFRecord event file (length, crc, data, crc)."""
    out, data = [], open(path, "rb").read()
    i = 0
    while i < len(data):
        n = int.from_bytes(data[i : i + 8], "little")
        event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
        i += 12 + n + 4
    return out


def test_scalar_tags_are_grouped():
    rec = {"partition": "20260101/00", "progressive_auc": 0.7, "train_auc": 0.75,
           "logloss": 0.5, "table_rows": 10, "train_examples_per_sec": 1e5,
           "checkpoint_seconds": 0.1, "malformed_lines": 0, "new_field": 3,
           "source_warnings": [], "oracle_auc": float("nan")}  # fmt: skip
    assert records.scalar_tags(rec) == {
        "eval/auc": 0.7, "train/auc": 0.75, "eval/logloss": 0.5, "store/rows": 10,
        "perf/train_examples_per_sec": 1e5, "perf/checkpoint_seconds": 0.1,
        "data/malformed_lines": 0, "other/new_field": 3,
    }  # fmt: skip


def test_a_run_writes_one_grouped_scalar_per_partition_and_field(tmp_path):
    cfg = smoke_stream(str(tmp_path / "data"), hours=2, tensorboard=True, checkpoint=False)
    summary = train.train_and_evaluate(cfg, str(tmp_path / "w"))
    lines = [json.loads(x) for x in open(summary["metrics_file"])]
    (events,) = glob.glob(str(tmp_path / "w" / "tb" / "events.*"))
    got = _events(events)
    for step, rec in enumerate(lines, 1):
        mine = {tag: v for tag, s, v in got if s == step}
        assert abs(mine["eval/auc"] - rec["progressive_auc"]) < 1e-6
        assert mine["store/rows"] == rec["table_rows"]
        # checkpoint_seconds is measured after the metrics line is written
        assert set(mine) == set(records.scalar_tags(rec)) | {"perf/checkpoint_seconds"}


def _line(p):
    return json.dumps({"partition": p, "examples": 1}) + "\n"


@pytest.mark.parametrize(
    "lines, cursor, skipped, kept, dropped",
    [
        # no checkpoint committed: every line is trained again
        (["20260101/00", "20260101/01"], None, [], [], ["20260101/00", "20260101/01"]),
        # lines after the cursor were written by a run that stopped before committing them
        (["20260101/00", "20260101/01", "20260101/02"], "20260101/01", [],
         ["20260101/00", "20260101/01"], ["20260101/02"]),
        # a line cut short by a kill
        (["20260101/00", '{"partit'], "20260101/00", [], ["20260101/00"], ["an unreadable line"]),
        # one line per partition, whatever the file holds
        (["20260101/00", "20260101/01", "20260101/01"], "20260101/01", [],
         ["20260101/00", "20260101/01"], ["20260101/01"]),
        # a partition the checkpoint skipped (missing then) is trained when it arrives
        (["20260101/00", "20260101/01", "20260101/02"], "20260101/02", ["20260101/01"],
         ["20260101/00", "20260101/02"], ["20260101/01"]),
        # one trained late (before the cursor in time, after it in the file) and committed
        (["20260101/00", "20260101/02", "20260101/01"], "20260101/02", [],
         ["20260101/00", "20260101/02", "20260101/01"], []),
        # HHMM partitions compare by time
        (["20260101/0930", "20260101/1000"], "20260101/0930", [], ["20260101/0930"],
         ["20260101/1000"]),
    ],
)  # fmt: skip
def test_truncate_metrics_keeps_one_line_per_committed_partition(
    tmp_path, lines, cursor, skipped, kept, dropped
):
    path = str(tmp_path / "metrics.jsonl")
    with open(path, "w") as f:
        f.writelines(x if x.startswith("{") else _line(x) for x in lines)
    assert records.truncate_metrics(path, cursor, skipped) == dropped
    with open(path) as f:
        assert f.read() == "".join(_line(p) for p in kept)
    assert not os.path.exists(path + ".tmp")
