"""The partition source: order, markers, cursor, and partitions appearing while it waits."""

from __future__ import annotations

import os
import threading
import time

from jaxstream.stream import PartitionSource, SourceConfig


def make(root, key, done=True):
    path = os.path.join(root, *key.split("/"))
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, "part-00000"), "w").close()
    if done:
        open(os.path.join(path, "_SUCCESS"), "w").close()
    return path


def test_ready_partitions_in_time_order_after_cursor(tmp_path):
    root = str(tmp_path)
    for key in ["20260102/00", "20260101/23", "20260101/05"]:
        make(root, key)
    make(root, "20260102/01", done=False)  # not complete yet
    os.makedirs(os.path.join(root, "junk"))
    src = PartitionSource(SourceConfig(root))
    assert [p.key for p in src] == ["20260101/05", "20260101/23", "20260102/00"]
    assert src.cursor == "20260102/00"
    assert [p.key for p in PartitionSource(SourceConfig(root), cursor="20260101/05")] == [
        "20260101/23", "20260102/00"]  # fmt: skip
    assert [p.key for p in PartitionSource(SourceConfig(root, max_partitions=1))] == ["20260101/05"]
    assert next(iter(PartitionSource(SourceConfig(root)))).files[0].endswith("part-00000")


def test_waits_for_partitions_that_appear_later(tmp_path):
    root = str(tmp_path)
    make(root, "20260101/00")

    def writer():
        for h in (1, 2):
            time.sleep(0.3)
            make(root, f"20260101/0{h}", done=False)
            time.sleep(0.1)
            open(os.path.join(root, "20260101", f"0{h}", "_SUCCESS"), "w").close()

    th = threading.Thread(target=writer)
    th.start()
    cfg = SourceConfig(root, wait=True, poll_seconds=0.05, idle_timeout_seconds=1.0)
    t0 = time.monotonic()
    keys = [p.key for p in PartitionSource(cfg)]
    th.join()
    assert keys == ["20260101/00", "20260101/01", "20260101/02"]
    assert time.monotonic() - t0 >= 1.0  # it waited for the idle timeout before stopping


def test_custom_pattern_day_only(tmp_path):
    root = str(tmp_path)
    make(root, "day=20260103")
    make(root, "day=20260101")
    src = PartitionSource(SourceConfig(root, pattern=r"day=(?P<day>\d{8})"))
    assert [p.key for p in src] == ["20260101/00", "20260103/00"]
