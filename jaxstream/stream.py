"""Partition source: ready partitions in time order, waiting for new ones, with a cursor.

A partition is a directory ``ROOT/YYYYMMDD/HH/`` (the pattern is configurable) that holds
data files and, once complete, a ``_SUCCESS`` marker. The source yields each ready
partition once, oldest first, and remembers the last one it yielded (the cursor), so a
restarted job resumes after it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import glob
import logging
import os
import re
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Partition:
    key: str  # sortable time key, e.g. "20260101/05"
    path: str
    time: dt.datetime

    @property
    def files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.path, "part-*")))

    @property
    def is_day_start(self) -> bool:
        return self.time.hour == 0


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    root: str
    # A regex over the path relative to root, with named groups day (YYYYMMDD) and an
    # optional hour (HH); the default is Paddle's online layout.
    pattern: str = r"(?P<day>\d{8})/(?P<hour>\d{2})"
    marker: str = "_SUCCESS"
    poll_seconds: float = 5.0
    wait: bool = False  # keep polling for new partitions
    idle_timeout_seconds: float = 3600.0  # stop after this long with nothing new
    max_partitions: int | None = None


class PartitionSource:
    """Iterates ready partitions after ``cursor`` in time order."""

    def __init__(self, cfg: SourceConfig, cursor: str | None = None, sleep: Callable = time.sleep):
        self.cfg = cfg
        self.cursor = cursor
        self._sleep = sleep
        self._regex = re.compile(cfg.pattern + "$")

    def ready(self) -> list[Partition]:
        """Complete partitions after the cursor, oldest first."""
        out = []
        for dirpath, _, files in os.walk(self.cfg.root):
            if self.cfg.marker not in files:
                continue
            rel = os.path.relpath(dirpath, self.cfg.root).replace(os.sep, "/")
            m = self._regex.match(rel)
            if not m:
                continue
            hour = int(m.groupdict().get("hour") or 0)
            t = dt.datetime.strptime(m["day"], "%Y%m%d") + dt.timedelta(hours=hour)
            key = t.strftime("%Y%m%d/%H")
            if self.cursor is None or key > self.cursor:
                out.append(Partition(key, dirpath, t))
        return sorted(out, key=lambda p: p.key)

    def __iter__(self) -> Iterator[Partition]:
        yielded = 0
        idle_since = time.monotonic()
        while True:
            batch = self.ready()
            for p in batch:
                if self.cfg.max_partitions is not None and yielded >= self.cfg.max_partitions:
                    return
                yield p
                self.cursor = p.key
                yielded += 1
                idle_since = time.monotonic()
            if self.cfg.max_partitions is not None and yielded >= self.cfg.max_partitions:
                return
            if not self.cfg.wait:
                if not batch:
                    return
                continue
            if not batch:
                if time.monotonic() - idle_since > self.cfg.idle_timeout_seconds:
                    log.info("no new partition for %.0fs; stopping", self.cfg.idle_timeout_seconds)
                    return
                self._sleep(self.cfg.poll_seconds)
