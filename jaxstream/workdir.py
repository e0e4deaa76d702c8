"""The run's workdir: one trainer at a time, no silent config change, history never
overwritten.

- :func:`lock` holds an OS file lock on ``workdir/.lock`` for the run: a second trainer
  refuses at once, naming the holder's pid.
- :func:`check_resumable` compares the config a checkpoint recorded with the new one: a
  field that changes the model or the data stops the run before any work, naming each
  field and both values. Only :data:`RESUMABLE_FIELDS` may change.
- :func:`move_history_aside` is the explicit way to start over in the same workdir.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from typing import Any

# Fields that change neither the model nor the data: how long to run, how to wait, where
# and how much to report, how fast to go. Everything else is fixed by the first checkpoint.
RESUMABLE_FIELDS = frozenset({
    "data_root", "max_partitions", "wait", "poll_seconds", "idle_timeout_seconds",
    "gap_wait_seconds",
    "max_malformed_fraction", "staleness", "store_shards", "table_capacity", "keep_bases",
    "metrics_file", "tensorboard", "progress", "dump_predictions", "devices",
    "batch_threads", "read_threads", "keep_batches_mb", "store_memory_mb", "store_disk_dir",
    "pass_batches",
})  # fmt: skip
LOCK_FILE = ".lock"


class RunError(RuntimeError):
    """A run cannot do its job; the message says why in one line. Nothing committed is lost."""


class WorkdirInUse(RunError):
    pass


class ConfigChanged(RunError):
    pass


class UnusablePath(RunError):
    pass


def prepare(path: str, what: str = "workdir") -> str:
    """The directory ``path`` made absolute, created if missing; :class:`UnusablePath`
    names ``what`` it is and why it cannot be (a file is there, a parent is a file, no
    permission)."""
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise UnusablePath(f"{what} {path}: {e.strerror or e}") from None
    return path


def check_appendable(path: str, what: str) -> None:
    """Raises :class:`UnusablePath` unless a file can be appended at ``path`` (an existing
    directory holds it, it is not a directory), before any work; creates nothing."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        reason = "Is a directory"
    elif not os.path.isdir(parent):
        reason = f"{parent} is not a directory"
    elif not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        reason = "Permission denied"
    else:
        return
    raise UnusablePath(f"{what} {path}: {reason}")


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_resumable(saved: dict, config: Any) -> None:
    """Raises :class:`ConfigChanged` naming every field (outside RESUMABLE_FIELDS) whose
    value differs between the checkpoint's config ``saved`` and ``config``."""
    now = _flat(json.loads(json.dumps(dataclasses.asdict(config), default=str)))
    before = _flat(json.loads(json.dumps(saved, default=str)))
    # A field the checkpoint does not know (added to the config since) cannot be compared.
    changed = [
        f"{k}: {before[k]!r} -> {now.get(k, '<absent>')!r}"
        for k in sorted(before)
        if k.split(".")[0] not in RESUMABLE_FIELDS and before[k] != now.get(k)
    ]
    if changed:
        raise ConfigChanged(
            "the config differs from the checkpoint's in "
            + "; ".join(changed)
            + " (resume with the old values, use a new workdir, or start over with "
            "--start_over, which moves the old history aside)"
        )


class lock:  # noqa: N801 - used as a context manager, like open()
    """``with lock(workdir):`` an exclusive, non-blocking flock held for the run."""

    def __init__(self, workdir: str):
        self.path = os.path.join(workdir, LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> lock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkdirInUse(f"workdir {os.path.dirname(self.path)} is in use by another "
                               f"trainer (pid {holder})") from None  # fmt: skip
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


HISTORY = ("checkpoints", "metrics.jsonl", "predictions", "tb")


def move_history_aside(workdir: str) -> str | None:
    """Moves the run's history (checkpoints, metrics, dumps) to ``workdir/history-<time>/``
    and returns that path (None when there was none). Nothing is deleted."""
    present = [n for n in HISTORY if os.path.exists(os.path.join(workdir, n))]
    if not present:
        return None
    dest = os.path.join(workdir, time.strftime("history-%Y%m%d-%H%M%S"))
    os.makedirs(dest)
    for name in present:
        os.replace(os.path.join(workdir, name), os.path.join(dest, name))
    return dest
