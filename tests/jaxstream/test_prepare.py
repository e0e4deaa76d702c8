"""prepare_stream: files you have -> ROOT/YYYYMMDD/HH/part-* + _SUCCESS, checked against the
inputs line by line, then read back and trained on."""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from jaxstream import train
from jaxstream.data.prepare import PrepareConfig, prepare_stream
from jaxstream.data.readers import read_avazu
from tests.conftest import REPO, smoke_stream

AVAZU_HEADER = "id,click,hour," + ",".join(f"c{i}" for i in range(21))


def _avazu(i, hour, click=0):
    return f"{10**19 + i},{click},{hour}," + ",".join(f"{(i * 7 + j) % 13:08x}" for j in range(21))


def _write(path, lines, newline_at_end=True):
    path.write_text("\n".join(lines) + ("\n" if newline_at_end else ""))
    return str(path)


def _partitions(root):
    """{key: [lines of its part files, in order]} and the keys marked ready."""
    out, ready = {}, set()
    for d in sorted(glob.glob(os.path.join(root, "*", "*"))):
        key = os.path.relpath(d, root)
        out[key] = [x for p in sorted(glob.glob(os.path.join(d, "part-*")))
                    for x in open(p).read().splitlines()]  # fmt: skip
        if os.path.exists(os.path.join(d, "_SUCCESS")):
            ready.add(key)
    return out, ready


@pytest.mark.parametrize(
    "sizes, kw, want",
    [
        # each file = hours_per_file equal line ranges
        ((10, 7), {"hours_per_file": 3}, [3, 3, 4, 2, 2, 3]),
        # the concatenated inputs cut every 4 lines (an hour spans both files)
        ((10, 7), {"lines_per_hour": 4}, [4, 4, 4, 4, 1]),
        ((8,), {"lines_per_hour": 4, "start": "20251231/23"}, [4, 4]),
    ],
)
def test_line_ranges_keep_every_line_in_order(tmp_path, sizes, kw, want):
    inputs, lines = [], []
    for f, n in enumerate(sizes):
        mine = [f"{f}\t{i}\tline" for i in range(n)]
        # the last file ends without a newline: its last line still counts
        inputs.append(_write(tmp_path / f"in{f}", mine, newline_at_end=f < len(sizes) - 1))
        lines += mine
    out = str(tmp_path / "stream")
    summary = prepare_stream(inputs, PrepareConfig("criteo", out, **kw))
    parts, ready = _partitions(out)
    assert [len(v) for v in parts.values()] == want
    assert [x for v in parts.values() for x in v] == lines
    assert ready == set(parts) and summary["partitions"] == len(want)
    assert summary["first"] == kw.get("start", "20260101/00") == min(parts)
    assert summary["lines"] == len(lines)


def test_avazu_by_its_hour_column(tmp_path):
    lines = [_avazu(0, 14102100), _avazu(1, 14102101, 1), _avazu(2, 14102100),  # back to 00
             "1,0,141021,bad-hour", _avazu(3, 14102223)]  # fmt: skip
    src = _write(tmp_path / "train.csv", [AVAZU_HEADER, *lines])
    out = str(tmp_path / "stream")
    summary = prepare_stream([src], PrepareConfig("avazu", out))
    parts, ready = _partitions(out)
    assert sorted(parts) == ["20141021/00", "20141021/01", "20141022/23"] == sorted(ready)
    assert parts["20141021/00"] == [AVAZU_HEADER, lines[0], lines[2]]  # header repeated
    assert summary["skipped_lines"] == 1 and summary["skipped_examples"] == ["train.csv:5"]
    for key in parts:  # the reader finds each line in the hour it was written to
        (part,) = glob.glob(os.path.join(out, key, "part-*"))
        ex, report, hours = read_avazu(part)
        assert report.malformed == 0 and set(hours) == {int(key.replace("/", "")[2:])}


def test_a_stream_is_never_overwritten(tmp_path):
    src = _write(tmp_path / "day", [f"{i}" for i in range(48)])
    out = str(tmp_path / "stream")
    prepare_stream([src], PrepareConfig("criteo", out))
    before, _ = _partitions(out)
    with pytest.raises(ValueError, match="20260101/00 already holds _SUCCESS, part-00000"):
        prepare_stream([src], PrepareConfig("criteo", out))
    assert _partitions(out)[0] == before
    with pytest.raises(ValueError, match="has 48 lines, fewer than the 100 hours"):
        prepare_stream([src], PrepareConfig("criteo", str(tmp_path / "s2"), hours_per_file=100))
    with pytest.raises(ValueError, match="no such input file"):
        prepare_stream([str(tmp_path / "nope")], PrepareConfig("criteo", str(tmp_path / "s3")))


def test_the_cli_prepares_a_day_file_the_trainer_then_trains_on(tmp_path):
    """A generated 2-hour Criteo stream is concatenated into one day file, cut back into
    2 hours by the script, and read and trained on exactly as the original."""
    cfg = smoke_stream(str(tmp_path / "orig"), hours=2)
    day = tmp_path / "day_0"
    with open(day, "wb") as f:
        for part in sorted(glob.glob(str(tmp_path / "orig" / "*" / "*" / "part-*"))):
            f.write(open(part, "rb").read())
    out = tmp_path / "stream"
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "prepare_stream.py"),
         "--format=criteo", f"--output={out}", "--hours_per_file=2", str(day)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.splitlines()[-1].removeprefix("summary: "))
    assert summary["partitions"] == 2 and summary["lines"] == 4000
    assert proc.stdout.splitlines()[0].startswith("wrote 2 partitions (20260101/00 .. 20260101/01)")
    for hour in ("00", "01"):
        a, _ = train.read_path(cfg, str(tmp_path / "orig" / "20260101" / hour))
        b, _ = train.read_path(cfg, str(out / "20260101" / hour))
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.dense, b.dense)
        for slot in a.slot_ids:
            np.testing.assert_array_equal(a.slot_ids[slot], b.slot_ids[slot])
    run = train.train_and_evaluate(dataclasses.replace(cfg, data_root=str(out), checkpoint=False),
                                   str(tmp_path / "work"))  # fmt: skip
    assert run["partitions"] == 2
    again = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "prepare_stream.py"),
         "--format=criteo", f"--output={out}", str(day)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error: ")
    # Lines of another format: nothing written, one line naming the format and a line.
    wrong = subprocess.run(
        [sys.executable, os.path.join(REPO, "experiments", "prepare_stream.py"),
         "--format=avazu", f"--output={tmp_path / 'avazu'}", str(day)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert wrong.returncode == 1 and not (tmp_path / "avazu").exists()
    assert wrong.stderr.strip().splitlines()[-1] == (
        f"error: {day}: all 4,000 lines skipped as not avazu (first: day_0:1); nothing written"
    )
