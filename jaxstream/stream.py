"""Partition source: ready partitions in time order, waiting for new ones, with a cursor.

A partition is a directory ``ROOT/YYYYMMDD/HH/`` or ``ROOT/YYYYMMDD/HHMM/`` (Paddle's
``split_interval`` layout; the pattern is configurable) that holds ``part-*`` files and,
once complete, a ``_SUCCESS`` marker. The source yields each ready partition once, oldest
first, and remembers the newest one it yielded (the cursor), so a restarted job resumes
after it. It never skips silently:

- a partition missing while a later one is ready is waited for (``gap_wait_seconds``,
  when waiting for new data at all), then skipped with a report; if it becomes ready
  later, it is still yielded (late), and the set of skipped keys travels with the cursor;
- a name that is not a valid date and time (``20251231/99``, ``20251231/24``, ``20251301/00``)
  is reported with its path and ignored, never shifted to another time;
- a ready partition without part files is reported and not yielded until it has some.

Reports (one line each, each problem once) accumulate in ``reports`` for the caller.
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

DEFAULT_PATTERN = r"(?P<day>\d{8})/(?P<hour>\d{2})(?P<minute>\d{2})?"


@dataclasses.dataclass(frozen=True)
class Partition:
    key: str  # sortable time key: "20260101/05", or "20260101/0530" in a minute layout
    path: str
    time: dt.datetime | None

    @property
    def files(self) -> list[str]:
        return sorted(glob.glob(os.path.join(self.path, "part-*")))

    @property
    def is_day_start(self) -> bool:
        return self.time.hour == 0 and self.time.minute == 0


def key_time(key: str) -> dt.datetime:
    """The time of a partition key ("YYYYMMDD/HH" or "YYYYMMDD/HHMM")."""
    day, _, hhmm = key.partition("/")
    return dt.datetime.strptime(day + hhmm.ljust(4, "0"), "%Y%m%d%H%M")


@dataclasses.dataclass(frozen=True)
class SourceConfig:
    root: str
    # A regex over the path relative to root, with named groups day (YYYYMMDD) and optional
    # hour (HH) and minute (MM); the default takes Paddle's hourly and split layouts.
    pattern: str = DEFAULT_PATTERN
    marker: str = "_SUCCESS"
    poll_seconds: float = 5.0
    wait: bool = False  # keep polling for new partitions
    idle_timeout_seconds: float = 3600.0  # stop after this long with nothing new
    max_partitions: int | None = None
    interval_minutes: int = 60  # the spacing of partitions (Paddle's split_interval)
    gap_wait_seconds: float = 600.0  # with wait: how long a missing partition is waited for


class PartitionSource:
    """Iterates ready partitions after ``cursor`` in time order, then late ones."""

    def __init__(
        self,
        cfg: SourceConfig,
        cursor: str | None = None,
        skipped: list[str] | tuple[str, ...] = (),
        sleep: Callable = time.sleep,
    ):
        self.cfg = cfg
        self.cursor = cursor
        self.skipped: set[str] = set(skipped)
        self.reports: list[str] = []
        self._reported: set[str] = set()
        self._sleep = sleep
        self._regex = re.compile(cfg.pattern + "$")
        self._gap_since: dict[str, float] = {}
        # A layout without hours (day folders) has a partition a day, whatever the config.
        minutes = cfg.interval_minutes if "(?P<hour>" in cfg.pattern else 24 * 60
        self._step = dt.timedelta(minutes=minutes)

    def _report(self, key: str, message: str) -> None:
        if key not in self._reported:
            self._reported.add(key)
            self.reports.append(message)
            log.warning("%s", message)

    def _scan(self) -> dict[str, Partition]:
        """Every complete, valid partition under the root, by key."""
        out = {}
        for dirpath, _, files in os.walk(self.cfg.root):
            if self.cfg.marker not in files:
                continue
            rel = os.path.relpath(dirpath, self.cfg.root).replace(os.sep, "/")
            m = self._regex.match(rel)
            if not m:
                self._report(dirpath, f"{dirpath}: has {self.cfg.marker} but is not a "
                             "partition (want ROOT/YYYYMMDD/HH or HHMM); ignored")  # fmt: skip
                continue
            g = m.groupdict()
            hour, minute = int(g.get("hour") or 0), int(g.get("minute") or 0)
            try:
                day = dt.datetime.strptime(m["day"], "%Y%m%d")
                if hour > 23 or minute > 59:
                    raise ValueError("hour or minute out of range")
            except ValueError as e:
                self._report(dirpath, f"{dirpath}: not a valid date and time ({e}); ignored")
                continue
            t = day + dt.timedelta(hours=hour, minutes=minute)
            key = t.strftime("%Y%m%d/%H%M" if g.get("minute") else "%Y%m%d/%H")
            if not glob.glob(os.path.join(dirpath, "part-*")):
                self._report(dirpath, f"{dirpath}: marked ready but has no part-* files; "
                             "waiting for them")  # fmt: skip
                continue
            out[key] = Partition(key, dirpath, t)
        return out

    def ready(self) -> list[Partition]:
        """Partitions to train now, in order: late ones (skipped before, ready now), then
        new ones after the cursor up to the first missing one that is still waited for."""
        found = self._scan()
        late = sorted((p for k, p in found.items() if k in self.skipped), key=lambda p: p.time)
        new = sorted((p for p in found.values() if self.cursor is None
                      or p.time > key_time(self.cursor)), key=lambda p: p.time)  # fmt: skip
        out, prev = list(late), (None if self.cursor is None else key_time(self.cursor))
        for p in new:
            if prev is not None:
                missing = []
                t = prev + self._step
                while t < p.time:
                    missing.append(t)
                    t += self._step
                if missing and not self._gap_expired(missing[0]):
                    break  # wait for the missing one before training later ones
                for t in missing:
                    key = t.strftime("%Y%m%d/%H%M" if len(p.key) == 13 else "%Y%m%d/%H")
                    self.skipped.add(key)
                    self._report(f"skip:{key}", f"partition {key} missing while {p.key} is "
                                 "ready: skipped for now (trained if it arrives)")  # fmt: skip
            out.append(p)
            prev = p.time
        return out

    def _gap_expired(self, missing: dt.datetime) -> bool:
        if not self.cfg.wait:
            return True  # not waiting for data at all: skip (reported) and go on
        first = self._gap_since.setdefault(str(missing), time.monotonic())
        return time.monotonic() - first >= self.cfg.gap_wait_seconds

    def __iter__(self) -> Iterator[Partition]:
        yielded = 0
        idle_since = time.monotonic()
        while True:
            batch = self.ready()
            for p in batch:
                if self.cfg.max_partitions is not None and yielded >= self.cfg.max_partitions:
                    return
                yield p
                if p.key in self.skipped:
                    self.skipped.discard(p.key)
                elif self.cursor is None or p.time > key_time(self.cursor):
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
