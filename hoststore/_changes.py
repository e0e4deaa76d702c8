"""What happened to a table besides row writes, by generation: the keys evicted and the
shrink decays applied. Row writes stamp the row itself; this log lets a delta carry the
rest of what changed after its parent's cut. It keeps the last ``GENERATIONS`` snapshots'
worth; a delta whose parent is older is refused (take a base), never silently incomplete.
Not thread-safe: the owning table holds its lock around every call."""

from __future__ import annotations

import numpy as np

GENERATIONS = 64


class ChangeLog:
    def __init__(self):
        self.evicted: list[tuple[int, np.ndarray]] = []  # (generation, keys)
        self.decays: list[tuple[int, float]] = []  # (generation, shrink decay rate)
        self.horizon = 0  # a delta's parent cut must be at or after this generation
        # With a disk tier: keys of rows changed after the last cut (``spill_base``) that
        # went to disk since, so that a delta from that cut reads them instead of scanning.
        self.spill_base = 0
        self._spilled: list[np.ndarray] | None = []  # None: too many, a delta scans

    def check(self, since: int | None, table: str) -> None:
        if since is not None and since < self.horizon:
            raise ValueError(f"table {table!r}: the parent snapshot (generation {since}) is "
                             f"older than the change log (generation {self.horizon} on): "
                             "take a base")  # fmt: skip

    def after(self, since: int | None) -> tuple[np.ndarray, list[float]]:
        """(keys evicted, each once; decay rates in order) logged after generation ``since``
        (all of them for None)."""
        after = -1 if since is None else since
        keys = [k for g, k in self.evicted if g > after]
        deleted = np.unique(np.concatenate(keys)) if keys else np.empty(0, np.int64)
        return deleted, [r for g, r in self.decays if g > after]

    def spilled(self, keys: np.ndarray, limit: int) -> None:
        """Logs keys gone to disk; past ``limit`` distinct keys the log gives up (a table
        that is never snapshotted must not grow it forever) and the next delta scans."""
        if self._spilled is None or not len(keys):
            return
        self._spilled.append(keys)
        if sum(map(len, self._spilled)) > limit:
            merged = np.unique(np.concatenate(self._spilled))
            self._spilled = [merged] if len(merged) <= limit else None

    def spilled_after(self, since: int | None) -> np.ndarray | None:
        """Keys of rows changed after ``since`` that went to disk since, each once, or None
        when the log cannot tell (``since`` is not the last cut: scan the disk instead)."""
        if since is None or since != self.spill_base or self._spilled is None:
            return None
        return np.unique(np.concatenate(self._spilled)) if self._spilled else np.empty(0, np.int64)

    def cut_spills(self, cut: int) -> None:
        """A snapshot's cut: the spill log starts over from it."""
        self.spill_base, self._spilled = cut, []

    def trim(self, cut: int) -> None:
        self.horizon = max(self.horizon, cut - GENERATIONS)
        self.evicted = [(g, k) for g, k in self.evicted if g > self.horizon]
        self.decays = [(g, r) for g, r in self.decays if g > self.horizon]

    def restart(self, cut: int) -> None:
        """After a load: nothing logged, and no parent before the loaded cut."""
        self.evicted, self.decays = [], []
        self.horizon = max(self.horizon, cut)
        self.cut_spills(cut)
