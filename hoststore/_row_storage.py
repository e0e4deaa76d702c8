"""Row arrays that grow without copying their rows.

A table's rows live in anonymous memory reserved far beyond the rows in use: the kernel
backs a page only when it is first written, so reserved-but-unused rows cost address
space, not RAM. Growing the table then only widens the numpy view over the same memory:
no copy of the rows and no page faults under the table's lock. Only when the reservation
itself runs out, or the system refuses one (a ulimit on address space), are the rows
copied into a larger block, as a plain numpy array would be. Under strict overcommit
(vm.overcommit_memory=2) nothing is reserved and rows are copied at each growth.
"""

from __future__ import annotations

import mmap
import platform
import sys

import numpy as np

# Rows reserved up front (or 4x the requested capacity, if more): 2^26 rows of a dim-16
# float32 table are 4 GiB of address space.
RESERVE_ROWS = 1 << 26
_RESERVE_FACTOR = 4
# MAP_NORESERVE: do not count the reservation against overcommit limits. Python exports
# it only from 3.12 on; its value on x86-64 and arm64 Linux.
_NORESERVE = (
    0x4000 if sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64") else 0
)


def _strict_overcommit() -> bool:
    """Linux's vm.overcommit_memory=2 charges every mapping in full (MAP_NORESERVE is
    ignored): reservations there would eat the commit limit that later allocations need."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return False


_RESERVE = not _strict_overcommit()


def empty_aligned(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
    """np.empty whose data starts on a cache-line boundary, so a 64-byte row (dim 16) or a
    32-byte record is one cache line, not two."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + align, np.uint8)
    start = -buf.ctypes.data % align
    return buf[start : start + nbytes].view(dtype).reshape(shape)


def _reserve(nbytes: int) -> mmap.mmap | None:
    if not _RESERVE:
        return None
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _NORESERVE
    try:
        block = mmap.mmap(-1, max(nbytes, 1), flags=flags)
    except (OSError, ValueError, OverflowError):
        return None
    if hasattr(mmap, "MADV_HUGEPAGE"):
        # Random row access over gigabytes misses the TLB on 4 KiB pages; numpy asks for
        # transparent huge pages on its large arrays the same way.
        try:
            block.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return block


class GrowableRows:
    """An array of shape (rows, *row_shape) whose ``resize`` keeps the first rows in place.

    Views returned by earlier ``resize`` calls stay valid (they alias the same memory) as
    long as the reservation was not outgrown.
    """

    def __init__(self, row_shape: tuple[int, ...], dtype, reserve_rows: int = RESERVE_ROWS):
        self.row_shape = tuple(row_shape)
        self.dtype = np.dtype(dtype)
        self._row_items = int(np.prod(self.row_shape, dtype=np.int64))
        self._row_bytes = self._row_items * self.dtype.itemsize
        self._reserve_rows = reserve_rows
        self._block: mmap.mmap | None = None
        self._block_rows = 0
        self.array = np.empty((0, *self.row_shape), self.dtype)
        self.copies = 0  # times the rows had to be copied (reservation outgrown or refused)

    def resize(self, rows: int, keep: int) -> np.ndarray:
        """Makes ``self.array`` (rows, *row_shape), its first ``keep`` rows unchanged."""
        if rows <= self._block_rows:
            self.array = self._view(self._block, rows)
            return self.array
        old = self.array
        want = max(self._reserve_rows, _RESERVE_FACTOR * rows)
        block = _reserve(want * self._row_bytes)
        if block is not None:
            new = self._view(block, rows)
            self._block, self._block_rows = block, want
        else:  # no reservation possible: an ordinary array, copied at every growth
            new = empty_aligned((rows, *self.row_shape), self.dtype)
            self._block, self._block_rows = None, 0
        if keep:
            new[:keep] = old[:keep]
            self.copies += 1
        self.array = new
        return new

    def _view(self, block: mmap.mmap, rows: int) -> np.ndarray:
        flat = np.frombuffer(block, dtype=self.dtype, count=rows * self._row_items)
        return flat.reshape((rows, *self.row_shape))
