"""Threads that split a large read-only lookup (evaluation, serving) into chunks.

Lookups are bound by memory latency, so each core adds its own misses in flight; the
compiled kernels release the GIL. Below ``MIN_IDS_PER_CHUNK`` ids per chunk the hand-off
costs more than it saves, and several chunks per thread let a thread on a busier core
simply take fewer of them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

MIN_IDS_PER_CHUNK = 32768
CHUNKS_PER_THREAD = 4


class LookupPool:
    def __init__(self, threads: int):
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"lookup_threads must be an int >= 1, got {threads!r}")
        self.threads = threads
        self._pool = ThreadPoolExecutor(threads, "hoststore-lookup") if threads > 1 else None

    def run(self, fn: Callable[[int, int], int], n: int) -> int:
        """``fn(lo, hi)`` over [0, n) in chunks, in parallel when worth it; the results summed."""
        parts = min(self.threads * CHUNKS_PER_THREAD, n // MIN_IDS_PER_CHUNK)
        if self._pool is None or parts < 2:
            return fn(0, n)
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)
        futures = [self._pool.submit(fn, lo, hi) for lo, hi in itertools.pairwise(bounds)]
        return sum(f.result() for f in futures)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
