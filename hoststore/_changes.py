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

    def trim(self, cut: int) -> None:
        self.horizon = max(self.horizon, cut - GENERATIONS)
        self.evicted = [(g, k) for g, k in self.evicted if g > self.horizon]
        self.decays = [(g, r) for g, r in self.decays if g > self.horizon]

    def restart(self, cut: int) -> None:
        """After a load: nothing logged, and no parent before the loaded cut."""
        self.evicted, self.decays = [], []
        self.horizon = max(self.horizon, cut)
