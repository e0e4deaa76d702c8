"""Turn files you already have into a stream the trainer reads: ``ROOT/YYYYMMDD/HH/part-*``
with a ``_SUCCESS`` marker per partition.

- **By line ranges** (Criteo day files, Paddle slot files, any format whose lines carry no
  time): each input file covers ``hours_per_file`` consecutive hours and is cut into that
  many equal line ranges (Criteo's 1TB set is one file per day: 24 hours each); or the
  inputs, concatenated, are cut every ``lines_per_hour`` lines. The first hour is
  ``start``. Each partition is marked ready as soon as it is complete.
- **By the Avazu ``hour`` column** (``YYMMDDHH``): every line goes to its own hour, the
  header (when the input has one) is repeated in each part file, and lines whose hour does
  not parse are skipped and counted. The rows of an hour may come back later in the file,
  so the partitions are marked ready at the end, in time order.

Lines are copied byte for byte. Nothing is ever overwritten: a partition that already holds
part files or a marker is an error naming it, before anything is written to it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable

import numpy as np

_CHUNK = 8 << 20
FORMATS = ("criteo", "slot", "paddlerec", "avazu")


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    format: str  # criteo | slot | paddlerec: by line ranges; avazu: by its hour column
    output: str
    start: str = "20260101/00"  # the first partition (line ranges only)
    hours_per_file: int = 24  # line ranges: each input file covers this many hours
    lines_per_hour: int | None = None  # line ranges: cut the concatenated inputs instead


Progress = Callable[[int, int], None]  # (bytes read so far, bytes in all)


def prepare_stream(inputs: list[str], cfg: PrepareConfig, progress: Progress | None = None
                   ) -> dict:  # fmt: skip
    """Writes the stream; returns a summary (partitions, lines, first and last keys,
    skipped lines)."""
    if cfg.format not in FORMATS:
        raise ValueError(f"format {cfg.format!r}: expected one of {', '.join(FORMATS)}")
    missing = [p for p in inputs if not os.path.isfile(p)]
    if not inputs or missing:
        raise ValueError(f"no such input file: {missing[0]}" if missing else "no input files")
    if cfg.lines_per_hour is not None and cfg.lines_per_hour < 1:
        raise ValueError(f"lines_per_hour must be >= 1, got {cfg.lines_per_hour}")
    if cfg.hours_per_file < 1:
        raise ValueError(f"hours_per_file must be >= 1, got {cfg.hours_per_file}")
    meter = _Meter(inputs, progress)
    if cfg.format == "avazu":
        counts, skipped = _by_hour_column(inputs, cfg.output, meter)
    else:
        counts, skipped = _by_line_ranges(inputs, cfg, meter), []
    keys = sorted(counts)
    return {
        "partitions": len(keys),
        "lines": sum(counts.values()),
        "first": keys[0] if keys else None,
        "last": keys[-1] if keys else None,
        "min_lines": min(counts.values(), default=0),
        "max_lines": max(counts.values(), default=0),
        "skipped_lines": len(skipped),
        "skipped_examples": skipped[:5],  # "file:line"
        "output": cfg.output,
    }


class _Meter:
    def __init__(self, inputs: list[str], progress: Progress | None):
        self.total = sum(os.path.getsize(p) for p in inputs)
        self.done = 0
        self._progress = progress

    def add(self, n: int) -> None:
        self.done += n
        if self._progress is not None:
            self._progress(self.done, self.total)


def _partition_dir(root: str, key: str) -> str:
    path = os.path.join(root, key)
    if os.path.isdir(path) and os.listdir(path):
        raise ValueError(f"{path} already holds {', '.join(sorted(os.listdir(path))[:3])}: "
                         "prepare into an empty root (a stream is never overwritten)")  # fmt: skip
    os.makedirs(path, exist_ok=True)
    return path


def _mark_ready(root: str, key: str) -> None:
    open(os.path.join(root, key, "_SUCCESS"), "w").close()


def _key(t: dt.datetime) -> str:
    return t.strftime("%Y%m%d/%H")


def _start_time(start: str) -> dt.datetime:
    try:
        return dt.datetime.strptime(start, "%Y%m%d/%H")
    except ValueError:
        raise ValueError(f"start {start!r}: expected YYYYMMDD/HH, e.g. 20260101/00") from None


# ---------------------------------------------------------------------------- line ranges


def _count_lines(path: str) -> int:
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")  # a last line without its newline counts too


def _by_line_ranges(inputs: list[str], cfg: PrepareConfig, meter: _Meter) -> dict[str, int]:
    """Cuts the inputs into hours; an hour that spans two input files gets a part file
    from each."""
    per = cfg.lines_per_hour
    cuts: list[tuple[str, int, list[int]]] = []  # (file, its first hour, lines per hour)
    hours = lines = 0
    for path in inputs:
        n = _count_lines(path)
        if per is None:  # this file is hours_per_file equal line ranges
            h = cfg.hours_per_file
            if n < h:
                raise ValueError(f"{path} has {n} lines, fewer than the {h} hours it should "
                                 "cover (hours_per_file)")  # fmt: skip
            cuts.append((path, hours, [(i + 1) * n // h - i * n // h for i in range(h)]))
            hours += h
        else:  # the concatenated inputs, cut every lines_per_hour lines
            sizes, pos = [], lines
            while pos < lines + n:
                sizes.append(min(lines + n - pos, per - pos % per))
                pos += sizes[-1]
            cuts.append((path, lines // per, sizes))
            lines += n
            hours = -(-lines // per)
    t0 = _start_time(cfg.start)
    keys = [_key(t0 + dt.timedelta(hours=i)) for i in range(hours)]
    for k in keys:  # every target is checked before anything is written
        _partition_dir(cfg.output, k)
    counts = dict.fromkeys(keys, 0)
    parts = dict.fromkeys(keys, 0)
    for path, first, sizes in cuts:
        with open(path, "rb") as f:
            reader = _LineBlocks(f, meter)
            for i, size in enumerate(sizes):
                key = keys[first + i]
                with open(os.path.join(cfg.output, key, f"part-{parts[key]:05d}"), "wb") as w:
                    reader.copy_lines(size, w)
                parts[key] += 1
                counts[key] += size
                if per is None or counts[key] == per:
                    _mark_ready(cfg.output, key)
    if per is not None and keys and counts[keys[-1]] < per:
        _mark_ready(cfg.output, keys[-1])  # the last hour is short: it is complete all the same
    return counts


class _LineBlocks:
    """Copies whole lines from a binary file in large blocks (numpy finds the newlines)."""

    def __init__(self, f, meter: _Meter):
        self._f, self._meter = f, meter
        self._buf = b""  # read, not yet copied

    def copy_lines(self, n: int, out) -> None:
        while n > 0:
            nl = np.flatnonzero(np.frombuffer(self._buf, np.uint8) == 10)
            take = min(n, len(nl))
            if take:
                cut = int(nl[take - 1]) + 1
                out.write(self._buf[:cut])
                self._buf = self._buf[cut:]
                n -= take
            if n == 0:
                return
            more = self._f.read(_CHUNK)
            self._meter.add(len(more))
            if not more:
                if self._buf:  # the file's last line has no newline: it counts all the same
                    out.write(self._buf + b"\n")
                    self._buf = b""
                return
            self._buf += more


# ---------------------------------------------------------------------------- avazu hours


def _by_hour_column(inputs: list[str], root: str, meter: _Meter
                    ) -> tuple[dict[str, int], list[str]]:  # fmt: skip
    counts: dict[str, int] = {}
    skipped: list[str] = []
    open_files: dict[str, object] = {}
    parts: dict[str, int] = {}
    try:
        for path in inputs:
            header = None
            with open(path, "rb") as f:
                for line_no, line in enumerate(f, 1):
                    meter.done += len(line)
                    if line_no == 1 and line.startswith(b"id,"):
                        header = line
                        continue
                    fields = line.split(b",", 3)
                    h = fields[2] if len(fields) > 3 else b""
                    if len(h) != 8 or not h.isdigit():
                        skipped.append(f"{os.path.basename(path)}:{line_no}")
                        continue
                    key = f"20{h[:6].decode()}/{h[6:].decode()}"
                    w = open_files.get(key)
                    if w is None:
                        w = open_files[key] = _open_part(root, key, parts, header)
                    w.write(line if line.endswith(b"\n") else line + b"\n")
                    counts[key] = counts.get(key, 0) + 1
                    if line_no % 100_000 == 0:
                        meter.add(0)
            meter.add(0)
            for w in open_files.values():  # the next input starts new part files
                w.close()
            open_files.clear()
    finally:
        for w in open_files.values():
            w.close()
    for key in sorted(counts):  # all complete only now: rows of an hour may come back late
        _mark_ready(root, key)
    return counts, skipped


def _open_part(root: str, key: str, parts: dict[str, int], header: bytes | None):
    try:
        dt.datetime.strptime(key, "%Y%m%d/%H")
    except ValueError:
        raise ValueError(f"hour {key.replace('/', '')[2:]} is not a valid YYMMDDHH") from None
    if key not in parts:
        _partition_dir(root, key)
        parts[key] = 0
    w = open(os.path.join(root, key, f"part-{parts[key]:05d}"), "wb")
    parts[key] += 1
    if header is not None:
        w.write(header)
    return w
