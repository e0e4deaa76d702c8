"""The disk tier: cold rows of a table on local disk, so a table can outgrow its RAM budget.

:class:`DiskTier` is the setting (where, and how much RAM the table's rows may use);
:class:`ColdRows` is the storage of one table's (or shard's) cold rows: whole row records
keyed by the row's key, in sorted run files (:mod:`hoststore._sorted_runs`, where the
format and why it is ours are described), read back a batch of keys at a time when a pull
or push needs them. The table decides what moves (:mod:`hoststore.table`); this module only
stores, scans and merges (merges run on a thread of their own).

Crash model: the tier is scratch. Each table opens a fresh directory under
``DiskTier.path`` and removes it at close; directories left by a killed process are removed
by the next one to open there. The durable state is the checkpoint (base + deltas), written
from both tiers, as it is for RAM rows: a kill -9 loses what it loses without the tier.
Nothing is synced to disk for the same reason (nothing reads it back after a crash).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import uuid
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from hoststore import _sorted_runs as runs
from hoststore._bloom import KeyFilter

_PREFIX = "hoststore-tier-"
_BATCH = 1 << 16  # records per write and per scan read (bounds the buffers a move holds)
_MAX_FILTER_LAYERS = 4
_FANIN = 4  # runs merged at once (see ColdRows.compact)
_MIN_KEYS_PER_READER = 128  # below, handing keys to another thread costs more than it saves


def _size_class(rows: int) -> int:
    """0 below _FANIN x _BATCH rows, then one more each factor _FANIN."""
    c = 0
    while rows >= _FANIN * _BATCH:
        rows //= _FANIN
        c += 1
    return c


@dataclasses.dataclass(frozen=True)
class DiskTier:
    """Cold rows go to ``path`` (a local directory; each table or shard opens its own
    directory under it) once RAM holds more rows than the budget: ``memory_mb`` of row
    storage (record, embedding, optimizer state and index slot per row) or, exactly,
    ``max_rows`` rows. ``read_threads``: threads that read a batch's cold keys (a read
    waits on the disk, or on the page cache's copy: several keep reads in flight). Not a
    :class:`~hoststore.TableConfig` field: it changes where rows live, not what the table
    computes, so snapshots load into tiered and all-RAM tables alike."""

    path: str
    memory_mb: float | None = None
    max_rows: int | None = None
    read_threads: int = dataclasses.field(default_factory=lambda: min(4, os.cpu_count() or 1))

    def __post_init__(self):
        if not self.path:
            raise ValueError("a disk tier needs a directory")
        if (self.memory_mb is None) == (self.max_rows is None):
            raise ValueError("a disk tier takes memory_mb or max_rows (one of them)")
        if self.memory_mb is not None and self.memory_mb <= 0:
            raise ValueError(f"memory_mb must be > 0, got {self.memory_mb}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {self.max_rows}")
        if not isinstance(self.read_threads, int) or self.read_threads < 1:
            raise ValueError(f"read_threads must be an int >= 1, got {self.read_threads!r}")

    def rows_for(self, bytes_per_row: float) -> int:
        """The RAM budget in rows for rows of ``bytes_per_row``."""
        if self.max_rows is not None:
            return self.max_rows
        return max(1, int(self.memory_mb * (1 << 20) / bytes_per_row))

    def split(self, parts: int) -> DiskTier:
        """Each of ``parts`` shards' share of the budget."""
        if self.max_rows is not None:
            return dataclasses.replace(self, max_rows=max(1, -(-self.max_rows // parts)))
        return dataclasses.replace(self, memory_mb=self.memory_mb / parts)


def _load_malloc_trim():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


_MALLOC_TRIM = _load_malloc_trim() if os.name == "posix" else None


def release_freed_memory() -> None:
    """Hands memory the process freed back to the OS. glibc keeps freed heap memory (and,
    past its adaptive mmap threshold, even multi-megabyte numpy buffers) for reuse: the
    batches of records the tier moves would otherwise keep the RSS hundreds of MB above
    what is in use (measured: 1143 -> 907 MB after one trim in a tiered trainer)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _owner() -> str:
    """This process as tier directories name it: pid@host (a pid means nothing on another
    host, or in another container sharing the directory)."""
    return f"{os.getpid()}@{_safe(socket.gethostname())}"


def _remove_stale(parent: str) -> None:
    """Removes tier directories of this host whose process is gone (a kill -9 leaves them
    behind); another host's are left alone."""
    host = _safe(socket.gethostname())
    for name in os.listdir(parent):
        if not name.startswith(_PREFIX) or name.count("@") < 2:
            continue
        pid, owner_host, _ = name[len(_PREFIX) :].split("@", 2)
        if owner_host == host and pid.isdigit() and int(pid) != os.getpid() \
                and not _alive(int(pid)):  # fmt: skip
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


class ColdRows:
    """One table's cold rows: key -> a fixed-size record of ``dtype``, in sorted runs
    (:mod:`hoststore._sorted_runs`): each put writes a run, runs of similar size merge. At
    most one live record per key. Not thread-safe: the owning table holds its lock around
    every call, except a snapshot's scan of a frozen tier (see :meth:`freeze`)."""

    def __init__(self, parent: str, name: str, dtype: np.dtype, read_threads: int = 1):
        self.dtype = runs.padded(np.dtype(dtype))  # whole words: records copy as words
        self._fdtype = runs.file_dtype(self.dtype)
        os.makedirs(parent, exist_ok=True)
        _remove_stale(parent)
        mine = f"{_PREFIX}{_owner()}@{_safe(name)}-{uuid.uuid4().hex[:8]}"
        self.path = os.path.join(parent, mine)
        os.makedirs(self.path)
        self._runs: list[runs.SortedRun] = []  # oldest first
        self._run_set: runs.RunSet | None = None  # the runs as lookups see them (see _find)
        self._next_run = 0
        self.count = 0
        # Keys that may be on disk, in one filter: a new key (most keys a pull misses in
        # RAM) costs one probe, not one per run (see _bloom.py).
        self.filter = KeyFilter()
        self._stale = 0  # keys deleted since the filter was built (it still says "maybe")
        # While a snapshot reads the rows of its cut, the runs stay as they were: records
        # that die meanwhile die when it ends (thaw), and no run is merged or removed.
        self._frozen: list[runs.SortedRun] | None = None
        self._deferred: list[tuple[runs.SortedRun, np.ndarray]] = []
        self._scans = 0  # scans in progress (merges wait: they would remove what they read)
        self.read_threads = read_threads  # threads a batch's reads use (this + the pool's)
        self._readers = (ThreadPoolExecutor(read_threads - 1, "hoststore-tier-read")
                         if read_threads > 1 else None)  # fmt: skip
        # Merges run on a thread of their own, one at a time, off the callers' path.
        self._merger = ThreadPoolExecutor(1, "hoststore-tier-merge")
        self._merging: _Merge | None = None
        self._merge_done: list[Future] = []  # the merge in flight's result, for _close
        self.merge_failures, self.merge_error = 0, ""  # merges that failed, the last's error
        # Closed and removed at close(), or when the table is dropped or the process exits.
        self._finalizer = weakref.finalize(self, _close, self._runs, self.path, self._readers,
                                           self._merger, self._merge_done)  # fmt: skip

    def __len__(self) -> int:
        return self.count

    def _writer(self, capacity: int) -> runs.RunWriter:
        self._next_run += 1
        path = os.path.join(self.path, f"run-{self._next_run:08d}.dat")
        return runs.RunWriter(path, self._fdtype, capacity)

    def put(self, keys: np.ndarray, records: np.ndarray, new: bool = True) -> None:
        """Writes records as one run; ``new``: keys not on disk before (else their old
        records die). Runs merge at :meth:`compact`, which the owner calls once what it
        moved is consistent: a merge that fails then loses nothing."""
        if not len(keys):
            return
        old = None if new else self._find(keys)[:3]
        recs = self._sorted_records(keys, records)
        w = self._writer(len(recs))
        with w.aborted_on_error():  # a failed write (a full disk) leaves the runs as they were
            for lo in range(0, len(recs), _BATCH):
                w.add(recs[lo : lo + _BATCH])
            self._runs.append(w.finish())
        if old is not None:  # the old records die once the new ones are written
            self._kill(*old)
        if new:
            self.count += len(keys)
            self.filter.add(keys)
            if self.filter.layers > _MAX_FILTER_LAYERS:
                self._rebuild_filter()

    def _sorted_records(self, keys: np.ndarray, records: np.ndarray) -> np.ndarray:
        """File records of ``keys`` and their ``records``, in key order."""
        keys = np.ascontiguousarray(keys, np.int64)
        recs = np.zeros(len(keys), self._fdtype)
        runs.pack(keys, np.argsort(keys), np.ascontiguousarray(records, self.dtype), recs)
        return recs

    def _find(self, keys: np.ndarray, kill: bool = False, ascending: bool = False):
        """(found mask, each found key's run, its record's index, records as words), for
        ``keys`` in any order; newest run first (a record dies in its old run when a newer
        one is written, but while frozen both are alive). With ``kill``, the records found
        die (while frozen, when it thaws) and a key twice in ``keys`` is found once; returns
        how many died as a fifth item. ``ascending``: the caller says the keys are."""
        n = len(keys)
        words = self._fdtype.itemsize // 8
        found, pos = np.zeros(n, np.bool_), np.zeros(n, np.int64)
        run_of = np.full(n, -1, np.int64)
        out = np.empty((n, words), np.int64)
        if not n or not self._runs:
            return found, run_of, pos, out, 0
        keys = np.ascontiguousarray(keys, np.int64)
        ascending = ascending or n < 2 or bool((keys[1:] >= keys[:-1]).all())
        todo = np.arange(n) if ascending else np.argsort(keys, kind="stable")
        rs, layers = self._current_runs(), self.filter.layer_table()
        parts = max(1, min(self.read_threads, n // _MIN_KEYS_PER_READER))
        if parts == 1 and (not kill or self._frozen is None):  # the kills in the same call
            killed = rs.lookup(keys, todo, layers, found, run_of, pos, out, kill)
        else:
            # Ranges of keys in parallel (one compiled call each, without the GIL; each
            # writes its own rows), then the kills (two ranges may share a byte of dead
            # bits; while frozen, they wait for the thaw).
            pieces = np.array_split(todo, parts)
            futures = [self._readers.submit(rs.lookup, keys, p, layers, found, run_of, pos, out)
                       for p in pieces[1:]]  # fmt: skip
            rs.lookup(keys, pieces[0], layers, found, run_of, pos, out)
            for f in futures:
                f.result()
            killed = 0
            if kill:
                hit = todo[found[todo]]  # in key order: a key found twice, once
                found[hit[1:][keys[hit[1:]] == keys[hit[:-1]]]] = False
                killed = self._kill(found, run_of, pos)
        return found, run_of, pos, out, killed

    def _records(self, words: np.ndarray) -> np.ndarray:
        return runs.split_records(words, self.dtype)[1]

    def _kill(self, found, run_of, pos) -> int:
        """Records found die (while frozen, when it thaws); returns how many."""
        if self._frozen is None:  # one compiled pass over every run's dead bits
            return self._current_runs().kill(found, run_of, pos)
        return self._defer_kills(found, run_of, pos)

    def _defer_kills(self, found, run_of, pos) -> int:
        hit = np.flatnonzero(found)
        for r in np.unique(run_of[hit]):
            self._deferred.append((self._runs[r], pos[hit[run_of[hit] == r]]))
        return len(hit)

    def _current_runs(self) -> runs.RunSet:
        """The runs as compiled lookups and kills see them (rebuilt after a put or merge:
        a run appended keeps the others' indices)."""
        if self._run_set is None or self._run_set.runs != self._runs:
            self._run_set = runs.RunSet(self._runs)
        return self._run_set

    def get(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mask of the keys on disk, their records)."""
        found, _, _, out, _ = self._find(keys)
        return found, self._records(out[found])

    def take_words(self, keys: np.ndarray, ascending: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(mask of the keys on disk, their file records as rows of 8-byte words: the key,
        then the record), and the keys found leave the disk (they move to RAM; while
        frozen, their records stay readable until it thaws). A key twice is found once;
        ``ascending``: the caller says the keys are."""
        found, _, _, out, killed = self._find(keys, kill=True, ascending=ascending)
        self.count -= killed
        return found, out[found]

    def take(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``take_words``, with the records as records."""
        found, words = self.take_words(keys)
        return found, self._records(words)

    def freeze(self) -> None:
        """The records on disk stay as they are (a snapshot reads them) until :meth:`thaw`."""
        self._frozen = list(self._runs)

    def thaw(self) -> None:
        self._frozen = None
        moved, self._deferred = self._deferred, []
        for run, pos in moved:
            run.kill(pos)

    def delete(self, keys: np.ndarray) -> None:
        """Deletes keys that are on disk (the caller knows they are)."""
        if not len(keys):
            return
        n = self._find(keys, kill=True)[4]
        self.count -= n
        self._stale += n
        if self._stale > self.count + (1 << 16):  # mostly stale: rebuild from a key scan
            self._rebuild_filter()

    def _rebuild_filter(self) -> None:
        """One layer for every key on disk, with a quarter more room: the keys of every run,
        frozen or not (a key dead but readable until a thaw stays in: "maybe" is safe)."""
        self.filter = KeyFilter(self.count + self.count // 4)
        for run in self._runs:
            for recs in run.chunks(_BATCH):
                self.filter.add(recs["key"])
        self._stale = 0

    def compact(self) -> None:
        """Installs a merge that has finished, drops runs all dead, and starts the next
        merge: the newest ``_FANIN`` runs of the smallest size class that has as many (a
        size class is a factor ``_FANIN``: a record is rewritten once a class, log(n /
        spill) times, and a settled table holds fewer than ``_FANIN`` runs a class), else a
        run mostly dead (rewritten without its dead records). The merged run takes the
        place of the newest it merges (with at most one live record per key, the order of
        runs matters only while frozen, and no merge is installed then). Not while frozen
        or scanned (a merge that finished waits: it would remove runs being read). A merge
        runs on the tier's merge thread, one at a time. A merge that failed (a full disk)
        loses nothing: its runs stay as they were, ``merge_failures`` and ``merge_error``
        (in the table's stats) say so, and the next call tries again (the spills, whose
        writes a full disk fails too, raise)."""
        if self._frozen is not None or self._scans:
            return
        self._install_merge()
        rs = self._runs
        busy = self._merging.pick if self._merging is not None else []
        for r in [r for r in rs if not r.live and r not in busy]:
            rs.remove(r)
            self._run_set = None
            r.close(remove=True)
        if self._merging is not None:
            return
        classes: dict[int, list[runs.SortedRun]] = {}
        for r in rs:
            classes.setdefault(_size_class(r.live), []).append(r)
        full = [c for c in sorted(classes) if len(classes[c]) >= _FANIN]
        if full:  # (spills that came while merges ran leave several classes full)
            pick = classes[full[0]][-_FANIN:]
        else:
            pick = [r for r in rs if 2 * r.live < r.n][:1]
            if not pick:
                return
        w = self._writer(sum(r.live for r in pick))
        # The dead bits as the merge starts: records that die while it reads die again in
        # the merged run when it is installed.
        dead = [r.dead.copy() for r in pick]
        self._merging = _Merge(pick, dead, self._merger.submit(_merge, pick, w))
        self._merge_done[:] = [self._merging.done]

    @property
    def merge_finished(self) -> bool:
        """Whether a merge has finished and waits for :meth:`compact` to install it."""
        return self._merging is not None and self._merging.done.done()

    def _install_merge(self, wait: bool = False) -> None:
        """A finished merge (with ``wait``, the one in flight) replaces its runs."""
        m = self._merging
        if m is None or not (wait or m.done.done()):
            return
        self._merging = None
        self._merge_done.clear()
        try:
            merged = m.done.result()
        except OSError as e:
            self.merge_failures += 1
            self.merge_error = str(e)
            return
        # Records that died while the merge read them: their keys die in the merged run.
        gone = [np.flatnonzero(np.unpackbits(r.dead & ~d, count=r.n, bitorder="little"))
                for r, d in zip(m.pick, m.dead, strict=True)]  # fmt: skip
        keys = np.concatenate([r.keys_at(p) for r, p in zip(m.pick, gone, strict=True)])
        runs.RunSet([merged]).kill_keys(np.sort(keys), merged.bloom.layer_table())
        self._runs[self._runs.index(m.pick[-1])] = merged
        for r in m.pick[:-1]:
            self._runs.remove(r)
        self._run_set = None  # (it holds the runs' RAM parts until the next lookup)
        for r in m.pick:
            r.close(remove=True)

    def settle(self) -> None:
        """Runs the merges due to the end, waiting for each (not while frozen or scanned;
        a merge that fails ends it)."""
        failures = self.merge_failures
        while self._frozen is None and not self._scans and self.merge_failures == failures:
            self.compact()
            if self._merging is None:
                return
            self._install_merge(wait=True)

    def scan(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every row, up to ``chunk`` (rounded up to 8) at a time: (keys, records), as of
        the start (while frozen, as of the freeze). Run by run, each in key order."""
        self._scans += 1
        try:
            for run in list(self._runs if self._frozen is None else self._frozen):
                for recs in run.chunks(chunk):
                    yield runs.split_records(runs.words(recs), self.dtype)
        finally:
            self._scans -= 1

    def ram_bytes(self) -> int:
        """RAM that grows with the cold rows: the key filter and each run's bloom filter,
        fence keys and dead bits."""
        return self.filter.nbytes + sum(r.ram_bytes() for r in self._runs)

    def disk_bytes(self) -> int:
        total = 0
        for root, _, files in os.walk(self.path):
            for f in files:
                try:
                    total += os.stat(os.path.join(root, f)).st_blocks * 512
                except OSError:
                    pass
        return total

    def close(self) -> None:
        """Closes the runs and removes their directory (the tier is scratch)."""
        self._finalizer()


@dataclasses.dataclass
class _Merge:
    """A merge in flight: the runs it merges, their dead bits as it started, its result."""

    pick: list[runs.SortedRun]
    dead: list[np.ndarray]
    done: Future


def _merge(pick: list[runs.SortedRun], w: runs.RunWriter) -> runs.SortedRun:
    try:
        with w.aborted_on_error():  # a failed merge leaves the runs as they were
            return runs.merge(pick, w, _BATCH)
    finally:
        release_freed_memory()  # (its buffers are the largest, in this thread's arena)


def _close(open_runs: list, path: str, readers: ThreadPoolExecutor | None,
           merger: ThreadPoolExecutor, merge_done: list[Future]) -> None:  # fmt: skip
    merger.shutdown(wait=True)  # (a merge in flight reads the runs: it ends first)
    for f in merge_done:  # a merged run never installed
        if not f.exception():
            f.result().close()
    if readers is not None:
        readers.shutdown(wait=False)
    for r in open_runs:
        r.close()
    shutil.rmtree(path, ignore_errors=True)
