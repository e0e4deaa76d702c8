"""The partition source: order, markers, cursor, and partitions appearing while it waits."""

from __future__ import annotations

import dataclasses
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


def test_invalid_names_are_reported_with_their_path_and_never_shifted(tmp_path):
    root = str(tmp_path)
    for key in ["20251231/23", "20251231/99", "20251231/24", "20251301/00", "20260101/00"]:
        make(root, key)
    os.makedirs(os.path.join(root, "loose"))
    open(os.path.join(root, "loose", "_SUCCESS"), "w").close()
    src = PartitionSource(SourceConfig(root))
    assert [p.key for p in src] == ["20251231/23", "20260101/00"]
    for bad in ("20251231/99", "20251231/24", "20251301/00", "loose"):
        assert any(os.path.join(root, bad) in r for r in src.reports), bad


def test_half_hour_splits(tmp_path):
    root = str(tmp_path)
    for key in ["20260101/0030", "20260101/0000", "20260101/0100"]:
        make(root, key)
    src = PartitionSource(SourceConfig(root, interval_minutes=30))
    assert [p.key for p in src] == ["20260101/0000", "20260101/0030", "20260101/0100"]
    assert src.reports == [] and src.skipped == set()


def test_a_ready_partition_without_part_files_is_reported_not_yielded(tmp_path):
    root = str(tmp_path)
    make(root, "20260101/00")
    empty = make(root, "20260101/01")
    os.remove(os.path.join(empty, "part-00000"))
    src = PartitionSource(SourceConfig(root))
    assert [p.key for p in src] == ["20260101/00"]
    assert any("no part-* files" in r for r in src.reports)
    open(os.path.join(empty, "part-00000"), "w").close()
    assert [p.key for p in PartitionSource(SourceConfig(root), cursor="20260101/00")] == [
        "20260101/01"]  # fmt: skip


def test_a_missing_hour_is_skipped_reported_and_trained_when_it_arrives(tmp_path):
    root = str(tmp_path)
    make(root, "20260101/00")
    make(root, "20260101/02")
    src = PartitionSource(SourceConfig(root))
    assert [p.key for p in src] == ["20260101/00", "20260101/02"]
    assert src.skipped == {"20260101/01"} and "20260101/01" in src.reports[0]
    make(root, "20260101/01")  # late
    again = PartitionSource(SourceConfig(root), cursor=src.cursor, skipped=sorted(src.skipped))
    assert [p.key for p in again] == ["20260101/01"]
    assert again.cursor == "20260101/02" and again.skipped == set()


def test_while_waiting_a_missing_hour_holds_back_later_ones(tmp_path):
    root = str(tmp_path)
    make(root, "20260101/00")
    make(root, "20260101/02")

    def late():
        time.sleep(0.3)
        make(root, "20260101/01")

    th = threading.Thread(target=late)
    th.start()
    cfg = SourceConfig(root, wait=True, poll_seconds=0.05, idle_timeout_seconds=0.8,
                       gap_wait_seconds=5.0)  # fmt: skip
    keys = [p.key for p in PartitionSource(cfg)]
    th.join()
    assert keys == ["20260101/00", "20260101/01", "20260101/02"]  # in order, none skipped
    # A missing hour that never comes is skipped once the gap wait is over.
    make(root, "20260101/04")
    src = PartitionSource(dataclasses.replace(cfg, gap_wait_seconds=0.2), cursor="20260101/02")
    assert [p.key for p in src] == ["20260101/04"] and src.skipped == {"20260101/03"}
