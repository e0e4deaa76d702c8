"""Sorted runs: the file format of the disk tier's cold rows.

A run is one immutable file of fixed-size records sorted by key; each record is the key
(int64) then the row's record, padded to whole 8-byte words. What a run keeps in RAM, per
record: its share of a bloom filter over the run's keys (~1.25 bytes), of a fence key per
block of ``BLOCK`` records (8 / ``BLOCK`` bytes), and a bit that says the record is dead
(its row went back to RAM, was deleted, or has a newer version in a newer run). A batch of
keys is looked up in one compiled call that does not hold the GIL: the bloom filter, a
binary search of the fences, one ``pread`` of the block (libc's, called from compiled code:
no Python object per key), a search in the block.

:class:`~hoststore.disk_tier.ColdRows` keeps a table's runs: each spill writes one, runs of
similar size are merged four at a time, on a thread of its own (so a table holds O(log n)
runs and a record is rewritten log4(n / spill) times: the merges' writes, not their reads,
are what a merge costs), and a run mostly dead is rewritten without its dead records.

Why a format of our own and not RocksDB (the engine the tier used first, through
``rocksdict``): the tier needs records of one size, batched lookups, whole-run writes,
full scans, and nothing durable (the tier is scratch: see the crash model in
:mod:`hoststore.disk_tier`). RocksDB's point reads and iteration went through a Python
object per key and value (measured in ``experiments/bench_disk.py``: these runs read keys
several times faster and scan at the disk's rate); its write-ahead log, memtables and
variable-size values bought the tier nothing.
"""

from __future__ import annotations

import contextlib
import os

import numba as nb
import numpy as np

from hoststore._bloom import KeyFilter, may_hold
from hoststore._kernels import pointer

BLOCK = 16  # records per block: one pread (1.4 KB at 88-byte records) and one fence key

# libc's pread and errno (glibc's and musl's name), called from compiled code: no Python
# object per read, and (unlike a ctypes function pointer) numba caches the caller on disk.
_pread = nb.types.ExternalFunction(
    "pread", nb.types.intp(nb.types.intc, nb.types.voidptr, nb.types.uintp, nb.types.int64)
)
_errno = nb.types.ExternalFunction("__errno_location", nb.types.CPointer(nb.types.intc)())


def padded(record: np.dtype) -> np.dtype:
    """``record`` padded to whole 8-byte words."""
    width = -(-record.itemsize // 8) * 8
    if width == record.itemsize:
        return record
    fields = [(n, *record.fields[n][:2]) for n in record.names]
    return np.dtype({"names": [f[0] for f in fields], "formats": [f[1] for f in fields],
                     "offsets": [f[2] for f in fields], "itemsize": width})  # fmt: skip


def file_dtype(record: np.dtype) -> np.dtype:
    """A run's record: ``key`` then ``rec`` (of ``record``), padded to 8-byte words."""
    record = padded(record)
    return np.dtype({"names": ["key", "rec"], "formats": ["<i8", record],
                     "offsets": [0, 8], "itemsize": 8 + record.itemsize})  # fmt: skip


def split_records(words: np.ndarray, record: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(keys, records of ``record``, a padded dtype) of file records as rows of words,
    both copies. Sliced as words: numpy copies a structured field element by element,
    ~10x slower."""
    return words[:, 0].copy(), words[:, 1:].copy().view(record).reshape(-1)


# Columns of RunSet.table, a row per run: its file descriptor and records, then the
# address and length of its fence keys, its dead bits and its bloom filter.
_FD, _N, _FENCE, _FENCES, _DEAD, _BLOOM, _BLOOM_WORDS = range(7)


@nb.njit(inline="always")
def _dead_bits(runs, r):
    return nb.carray(pointer(runs[r, _DEAD]), (runs[r, _N] + 7) >> 3, np.uint8)


@nb.njit(nogil=True, cache=True)
def _lookup(runs, layers, keys, todo, kill, found, run_of, pos, out, killed, buf):
    """For each i in ``todo`` (ascending keys), the newest run (the last) that holds
    ``keys[i]`` alive: found[i] = True, run_of[i] = the run, pos[i] = its record's index
    there, out[i] = its words; with ``kill``, the record dies and killed[run] counts it (a
    key twice in ``todo`` is found once). First the key filter (``layers``: address and
    words of each layer; a key in none is not on disk), then run by run, newest first, each
    with the keys not found yet in key order (a run's fences, filter and file are read in
    order): its bloom filter, a binary search of its fences, one ``pread`` of the block, a
    search in the block. Returns 0, or the errno of a read that failed (-1: it came back
    short)."""
    words = buf.shape[1]
    rest = np.empty_like(todo)
    m = 0
    for t in range(todo.shape[0]):
        k = np.uint64(keys[todo[t]])
        for layer in range(layers.shape[0]):
            bits = nb.carray(pointer(layers[layer, 0]), layers[layer, 1], np.uint64)
            if may_hold(bits, k):
                rest[m] = todo[t]
                m += 1
                break
    for r in range(runs.shape[0] - 1, -1, -1):
        if not m:
            break
        fence = nb.carray(pointer(runs[r, _FENCE]), runs[r, _FENCES], np.int64)
        bloom = nb.carray(pointer(runs[r, _BLOOM]), runs[r, _BLOOM_WORDS], np.uint64)
        dead = _dead_bits(runs, r)
        n = runs[r, _N]
        cur, left = -1, 0
        for t in range(m):
            i = rest[t]
            k = keys[i]
            hit = False
            b = -1
            if may_hold(bloom, np.uint64(k)):
                b = np.searchsorted(fence, k, side="right") - 1
            if b >= 0:
                lo = b * BLOCK
                cnt = min(BLOCK, n - lo)
                if b != cur:
                    want, got = cnt * words * 8, 0
                    while got < want:  # a read may come back in parts
                        got_now = _pread(np.intc(runs[r, _FD]), pointer(buf.ctypes.data + got),
                                         want - got, lo * words * 8 + got)  # fmt: skip
                        if got_now < 0:
                            return _errno()[0]
                        if got_now == 0:
                            return -1
                        got += got_now
                    cur = b
                for j in range(cnt):
                    kj = buf[j, 0]
                    if kj == k:
                        p = lo + j
                        bit = np.uint8(1 << (p & 7))
                        if not dead[p >> 3] & bit:
                            hit = True
                            found[i] = True
                            run_of[i] = r
                            pos[i] = p
                            for w in range(words):
                                out[i, w] = buf[j, w]
                            if kill:
                                dead[p >> 3] |= bit
                                killed[r] += 1
                        break
                    if kj > k:
                        break
            if not hit:
                rest[left] = i
                left += 1
        m = left
    return 0


@nb.njit(nogil=True, cache=True)
def _kill_found(runs, found, run_of, pos, killed):
    """Sets the dead bits of the records found (run ``run_of[i]``, record ``pos[i]``);
    killed[r] += how many of run r's were alive."""
    for i in range(found.shape[0]):
        if found[i]:
            r, p = run_of[i], pos[i]
            dead = _dead_bits(runs, r)
            bit = np.uint8(1 << (p & 7))
            if not dead[p >> 3] & bit:
                dead[p >> 3] |= bit
                killed[r] += 1


@nb.njit(nogil=True, cache=True)
def _read_keys(fd, itemsize, pos, out):
    """out[i] = the key of record ``pos[i]``; returns 0 or as :func:`_lookup` does."""
    for i in range(pos.shape[0]):
        got = _pread(np.intc(fd), pointer(out[i:].ctypes.data), 8, pos[i] * itemsize)
        if got < 0:
            return _errno()[0]
        if got < 8:
            return -1
    return 0


def _raise_read_error(err: int, what: str) -> None:
    if err:
        raise OSError(max(err, 0), f"reading {what}: {os.strerror(err) if err > 0 else 'short'}")


class RunSet:
    """Runs (oldest first) as one compiled lookup sees them: a table of their files, sizes
    and the addresses of their fences, dead bits and bloom filters (see
    :func:`hoststore._kernels.pointer`), built once per set of runs. One call for every
    run, without the GIL: the per-run Python steps of a lookup cost more than its reads
    when a batch brings a few dozen keys from disk. The set holds the runs, and a run never
    replaces those arrays (its dead bits change in place: kills show through)."""

    def __init__(self, runs: list[SortedRun]):
        self.runs = list(runs)
        table = [(r._fd, r.n, r.fence.ctypes.data, len(r.fence), r.dead.ctypes.data,
                  r.bloom.only_layer.ctypes.data, len(r.bloom.only_layer))
                 for r in self.runs]  # fmt: skip
        self.table = np.array(table, np.int64).reshape(len(self.runs), 7)

    def _count_kills(self, killed: np.ndarray) -> int:
        killed = killed.tolist()  # (a few runs: Python's ints beat numpy's steps here)
        for run, n in zip(self.runs, killed, strict=True):
            run.live -= n
        return sum(killed)

    def kill(self, found, run_of, pos) -> int:
        """The records a lookup found die (see :func:`_kill_found`); returns how many were
        alive."""
        killed = np.zeros(len(self.runs), np.int64)
        _kill_found(self.table, found, run_of, pos, killed)
        return self._count_kills(killed)

    def kill_keys(self, keys: np.ndarray, layers: np.ndarray) -> int:
        """The live records of ``keys`` (ascending) die; returns how many."""
        n = len(keys)
        words = self.runs[0].dtype.itemsize // 8 if self.runs else 1
        return self.lookup(keys, np.arange(n), layers, np.zeros(n, np.bool_),
                           np.full(n, -1, np.int64), np.zeros(n, np.int64),
                           np.empty((n, words), np.int64), kill=True)  # fmt: skip

    def lookup(self, keys: np.ndarray, todo: np.ndarray, layers: np.ndarray, found, run_of,
               pos, out, kill: bool = False) -> int:  # fmt: skip
        """Fills found/run_of/pos/out (see :func:`_lookup`) for ``keys[todo]``, ascending,
        of those the key filter's ``layers`` (:meth:`KeyFilter.layer_table`) may hold; with
        ``kill``, the records found die. Returns how many died."""
        if not len(todo) or not self.runs:
            return 0
        buf = np.empty((BLOCK, out.shape[1]), np.int64)
        killed = np.zeros(len(self.runs), np.int64)
        err = _lookup(self.table, layers, keys, todo, kill, found, run_of, pos, out, killed, buf)
        _raise_read_error(err, "a run")
        return self._count_kills(killed) if kill else 0


@nb.njit(nogil=True, cache=True)
def _kill(dead, pos):
    """Sets the dead bits of ``pos``; returns how many were alive."""
    n = 0
    for p in pos:
        bit = np.uint8(1 << (p & 7))
        if not dead[p >> 3] & bit:
            dead[p >> 3] |= bit
            n += 1
    return n


@nb.njit(nogil=True, cache=True)
def _merge(src, starts, out):
    """Merges the parts ``src[starts[p]:starts[p + 1]]`` (rows of 8-byte words, the key
    first, each sorted by key) into ``out``, in one pass (a few parts: a linear scan of
    their heads picks the smallest)."""
    parts = starts.shape[0] - 1
    head = starts[:-1].copy()
    words = src.shape[1]
    for k in range(out.shape[0]):
        best = -1
        for p in range(parts):
            if head[p] < starts[p + 1] and (best < 0 or src[head[p], 0] < src[head[best], 0]):
                best = p
        h = head[best]
        for w in range(words):
            out[k, w] = src[h, w]
        head[best] = h + 1


@nb.njit(nogil=True, cache=True)
def _pack(keys, order, rec, out):
    width = rec.shape[1]
    for i in range(order.shape[0]):
        j = order[i]
        for b in range(8):
            out[i, b] = keys[j, b]
        for b in range(width):
            out[i, 8 + b] = rec[j, b]


def pack(keys: np.ndarray, order: np.ndarray, records: np.ndarray, out: np.ndarray) -> None:
    """out[i] = (keys[order[i]], records[order[i]]) for ``out`` of :func:`file_dtype`
    (records). Compiled, as rows of bytes: numpy assigns a structured field element by
    element (~10x slower at a spill's sizes)."""
    n = len(order)
    _pack(keys.view(np.uint8).reshape(n, 8), order, records.view(np.uint8).reshape(n, -1),
          out.view(np.uint8).reshape(n, out.dtype.itemsize))  # fmt: skip


def words(recs: np.ndarray) -> np.ndarray:
    recs = np.ascontiguousarray(recs)
    return recs.view(np.int64).reshape(len(recs), recs.dtype.itemsize // 8)


class SortedRun:
    """One run file, open for reads; dead bits in RAM."""

    def __init__(self, path: str, dtype: np.dtype, fence: np.ndarray, n: int,
                 bloom: KeyFilter):  # fmt: skip
        self.path, self.dtype, self.fence, self.n, self.bloom = path, dtype, fence, n, bloom
        self.dead = np.zeros((n + 7) // 8, np.uint8)
        self.live = n
        self._fd = os.open(path, os.O_RDONLY)

    def _read(self, raw: np.ndarray, offset: int) -> None:
        """Fills ``raw`` (bytes) from ``offset`` of the file (``preadv``: no GIL held)."""
        got = 0
        while got < raw.nbytes:  # a read may come back in parts
            r = os.preadv(self._fd, [raw[got:]], offset + got)
            if not r:
                _raise_read_error(-1, self.path)
            got += r

    def kill(self, pos: np.ndarray) -> None:
        self.live -= _kill(self.dead, np.ascontiguousarray(pos, np.int64))

    def keys_at(self, pos: np.ndarray) -> np.ndarray:
        """The keys of records ``pos``."""
        out = np.empty(len(pos), np.int64)
        pos = np.ascontiguousarray(pos, np.int64)
        _raise_read_error(_read_keys(self._fd, self.dtype.itemsize, pos, out), self.path)
        return out

    def chunks(self, size: int):
        """The live records in key order, in chunks of up to ``size`` (rounded up to 8),
        none empty."""
        size = -(-size // 8) * 8
        for lo in range(0, self.n, size):
            cnt = min(size, self.n - lo)
            buf = np.empty(cnt, self.dtype)
            self._read(buf.view(np.uint8), lo * self.dtype.itemsize)
            dead = np.unpackbits(self.dead[lo // 8 : (lo + cnt + 7) // 8], count=cnt,
                                 bitorder="little")  # fmt: skip
            if not dead.any():
                yield buf
            elif not dead.all():  # (rows of words: numpy copies records field by field)
                yield words(buf)[dead == 0].view(self.dtype).reshape(-1)

    def ram_bytes(self) -> int:
        return self.fence.nbytes + self.dead.nbytes + self.bloom.nbytes

    def close(self, remove: bool = False) -> None:
        os.close(self._fd)
        if remove:
            os.unlink(self.path)


class RunWriter:
    """Writes a run: records arrive in key order, ``capacity`` of them at most."""

    def __init__(self, path: str, dtype: np.dtype, capacity: int):
        self.path, self.dtype = path, dtype
        self._f = open(path, "wb")  # noqa: SIM115 (closed by finish)
        self._n, self._capacity = 0, capacity
        self._fences: list[np.ndarray] = []
        self._bloom = KeyFilter(capacity)  # one layer (RunSet reads it as one)

    def add(self, recs: np.ndarray) -> None:
        if not len(recs):
            return
        if self._n + len(recs) > self._capacity:
            raise ValueError(f"a run of capacity {self._capacity} got {self._n + len(recs)}")
        keys = recs["key"]
        self._fences.append(keys[(-self._n) % BLOCK :: BLOCK].copy())
        self._bloom.add(keys)
        # (numpy's concatenation packs a structured dtype: the padding comes back here)
        self._f.write(np.ascontiguousarray(recs, self.dtype).view(np.uint8))
        self._n += len(recs)

    @contextlib.contextmanager
    def aborted_on_error(self):
        """On an error inside, the file is closed and removed, and the error goes on."""
        try:
            yield
        except BaseException:
            self._f.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            raise

    def finish(self) -> SortedRun:
        self._f.close()
        fence = np.concatenate(self._fences) if self._fences else np.zeros(0, np.int64)
        return SortedRun(self.path, self.dtype, fence, self._n, self._bloom)


def merge(runs: list[SortedRun], writer: RunWriter, chunk: int) -> SortedRun:
    """The live records of ``runs`` (no key alive in two) in one run, read and written
    ``chunk`` records a run at a time."""
    its = [r.chunks(chunk) for r in runs]
    bufs = [next(it, None) for it in its]
    while True:
        ready = [i for i, b in enumerate(bufs) if b is not None]
        if not ready:
            break
        # Every key up to the smallest of the buffers' last keys is in the buffers.
        limit = min(bufs[i]["key"][-1] for i in ready)
        parts = []
        for i in ready:
            j = int(np.searchsorted(bufs[i]["key"], limit, side="right"))
            parts.append(bufs[i][:j])
            bufs[i] = bufs[i][j:] if j < len(bufs[i]) else next(its[i], None)
            while bufs[i] is not None and not len(bufs[i]):
                bufs[i] = next(its[i], None)
        src = np.concatenate([words(p) for p in parts])
        merged = np.empty_like(src)
        _merge(src, np.cumsum([0] + [len(p) for p in parts]), merged)
        writer.add(merged.view(writer.dtype).reshape(-1))
    return writer.finish()
