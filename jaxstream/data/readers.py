"""Readers for Criteo TSV, Avazu CSV and Paddle's ``feasign:slot`` text format.

Each parses a whole file's bytes in compiled passes (numba): no per-line Python; Criteo
and Avazu files can be parsed by several threads, each a run of the lines. A line
that does not parse is counted, skipped, and (the first few) reported with file and line
number; nothing else in the file is lost.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba as nb
import numpy as np

from jaxstream.data.examples import Examples, ReadReport

CRITEO_DENSE = 13
CRITEO_SLOTS = tuple(f"C{i}" for i in range(1, 27))
AVAZU_COLUMNS = (
    "id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
    "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
    "C14,C15,C16,C17,C18,C19,C20,C21"
).split(",")
AVAZU_SLOTS = tuple(AVAZU_COLUMNS[3:])
MAX_REPORTED = 5
# Fewer lines than this per thread are parsed by fewer threads: below it a thread's hand-off
# costs more than the parse it takes over.
MIN_LINES_PER_THREAD = 4096

# Status codes of a parsed line; 0 is a good line.
_REASONS = {
    1: "label is not 0 or 1",
    2: "too many fields",
    3: "bad integer",
    4: "bad hex categorical (up to 16 hex digits)",
    5: "too few fields",
    6: "bad token (want feasign:slot)",
    8: "bad hour (want YYMMDDHH)",
    9: "bad token (want name:value)",
    10: "bad float",
    11: "wrong number of dense values",
    12: "truncated (no newline at the end of the file: a partial write?)",
    13: "ID over 2^64-1 (it would wrap onto another ID)",
    14: "dense value is not finite",
}


# Each byte's hex digit value, -1 for a byte that is not one: a table, not branches (the
# digits and letters of a hashed ID alternate at random, which branches mispredict).
_HEX_DIGIT = np.full(256, -1, np.int8)
_HEX_DIGIT[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX_DIGIT[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX_DIGIT[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)
# log1p of the small counts most Criteo integers are (the same float64 values math.log1p
# gives, looked up: the call is a third of a line's parse otherwise).
_LOG1P = np.log1p(np.arange(1024, dtype=np.float64))


@nb.njit(inline="always", cache=True)
def parse_uint64(buf, a, b):
    """Unsigned decimal in buf[a:b]: (value, status), status 0, or the reason code of an
    empty or non-digit string (6) or of a value over 2**64 - 1 (13), which must not wrap
    silently onto a smaller ID."""
    h = np.uint64(0)
    if a == b:
        return h, 6
    top = np.uint64(1844674407370955161)  # (2**64 - 1) // 10; the last digit may be <= 5
    for i in range(a, b):
        d = np.int64(buf[i]) - 48
        if d < 0 or d > 9:
            return np.uint64(0), 6
        if h > top or (h == top and d > 5):
            return np.uint64(0), 13
        h = h * np.uint64(10) + np.uint64(d)
    return h, 0


@nb.njit(inline="always", cache=True)
def token_bounds(buf, p, e):
    """(end, colon) of the space-separated token starting at ``p`` (end ``e`` of the line):
    ``buf[p:end]`` is the token, ``colon`` its first ':' (``end`` if none)."""
    q = p
    while q < e and buf[q] != 32:
        q += 1
    c = p
    while c < q and buf[c] != 58:
        c += 1
    return q, c


@nb.njit(inline="always", cache=True)
def token_capacity(buf, starts, ends):
    """An upper bound on the ``name:value`` tokens of the lines: their ':' count."""
    cap = 0
    for r in range(starts.shape[0]):
        for i in range(starts[r], ends[r]):
            cap += buf[i] == 58
    return cap


@nb.njit(cache=True, nogil=True)
def _line_bounds(buf):
    """Start and end (exclusive, without '\\r\\n') of every non-empty line, and its
    1-based line number in the file (blank lines count)."""
    n = buf.shape[0]
    count = 0
    for i in range(n):
        if buf[i] == 10:
            count += 1
    starts = np.empty(count + 1, np.int64)
    ends = np.empty(count + 1, np.int64)
    numbers = np.empty(count + 1, np.int64)
    m = 0
    s = 0
    line = 1
    for i in range(n + 1):
        if i == n or buf[i] == 10:
            e = i
            if e > s and buf[e - 1] == 13:
                e -= 1
            if e > s:
                starts[m] = s
                ends[m] = e
                numbers[m] = line
                m += 1
            s = i + 1
            line += 1
    return starts[:m], ends[:m], numbers[:m]


@nb.njit(cache=True, nogil=True)
def _parse_int(buf, a, b):
    """Signed decimal in buf[a:b] (a trailing '.0...' allowed); returns (value, ok)."""
    if a == b:
        return 0, True
    neg = buf[a] == 45
    if neg:
        a += 1
    if a == b:
        return 0, False
    v = 0
    i = a
    while i < b and buf[i] != 46:
        c = buf[i] - 48
        if c < 0 or c > 9 or v > 100000000000000000:
            return 0, False
        v = v * 10 + c
        i += 1
    if i < b:  # fractional part: zeros only
        i += 1
        while i < b:
            if buf[i] != 48:
                return 0, False
            i += 1
    return -v if neg else v, True


@nb.njit(cache=True, nogil=True)
def _parse_criteo(buf, starts, ends, sep, labels, dense, cats, present, status):
    """Parses the lines ``starts``/``ends`` into the given rows of the outputs (zeroed)."""
    for r in range(starts.shape[0]):
        a = starts[r]
        e = ends[r]
        field = 0
        p = a
        bad = 0
        while True:
            if 14 <= field <= 39:  # a categorical: found and parsed in one pass over it
                h = np.uint64(0)
                digits = 0  # counts hex digits, 32 for any other byte: > 16 is bad either way
                q = p
                while q < e and buf[q] != sep:
                    d = _HEX_DIGIT[buf[q]]
                    digits += 1 if d >= 0 else 32
                    h = (h << np.uint64(4)) | np.uint64(d & 15)
                    q += 1
                if q > p:
                    if digits > 16:
                        bad = 4
                        break
                    cats[r, field - 14] = np.int64(h)
                    present[r, field - 14] = True
                field += 1
                if q >= e:
                    break
                p = q + 1
                continue
            q = p
            while q < e and buf[q] != sep:
                q += 1
            if field == 0:
                if q - p != 1 or (buf[p] != 48 and buf[p] != 49):
                    bad = 1
                    break
                labels[r] = buf[p] - 48
            elif field <= 13:
                v, ok = _parse_int(buf, p, q)
                if not ok:
                    bad = 3
                    break
                # signed log1p: counts span six orders of magnitude
                a_v = abs(v)
                lg = _LOG1P[a_v] if a_v < _LOG1P.shape[0] else math.log1p(a_v)
                dense[r, field - 1] = -lg if v < 0 else lg
            else:
                bad = 2
                break
            field += 1
            if q >= e:
                break
            p = q + 1
        if bad == 0 and field < 14:
            bad = 5  # a line must at least hold the label and the 13 integers' tabs
        status[r] = bad


@nb.njit(cache=True, nogil=True)
def _hash_bytes(buf, a, b):
    """FNV-1a over buf[a:b]: a stable 64-bit ID for a categorical string."""
    h = np.uint64(0xCBF29CE484222325)
    for i in range(a, b):
        h = (h ^ np.uint64(buf[i])) * np.uint64(0x100000001B3)
    return np.int64(h)


@nb.njit(cache=True, nogil=True)
def _parse_avazu(buf, starts, ends, labels, hours, cats, status):
    """Parses the lines ``starts``/``ends`` into the given rows of the outputs (zeroed)."""
    for r in range(starts.shape[0]):
        e = ends[r]
        p = starts[r]
        field = 0
        bad = 0
        while True:
            q = p
            while q < e and buf[q] != 44:
                q += 1
            if field == 1:
                if q - p != 1 or (buf[p] != 48 and buf[p] != 49):
                    bad = 1
                    break
                labels[r] = buf[p] - 48
            elif field == 2:
                v, ok = _parse_int(buf, p, q)
                if not ok or q - p != 8:
                    bad = 8
                    break
                hours[r] = v
            elif 3 <= field <= 23:
                cats[r, field - 3] = _hash_bytes(buf, p, q)
            elif field > 23:
                bad = 2
                break
            field += 1
            if q >= e:
                break
            p = q + 1
        if bad == 0 and field != 24:
            bad = 5
        status[r] = bad


@nb.njit(cache=True, nogil=True)
def _parse_slots(buf, starts, ends, slot_of, label_slot):
    """``feasign:slot`` tokens; ``slot_of[slot_id]`` is the column or -1 (a slot not read:
    its tokens are skipped and counted)."""
    n = starts.shape[0]
    n_slots = 0
    for v in slot_of:
        n_slots = max(n_slots, v + 1)
    labels = np.zeros(n, np.float32)
    status = np.zeros(n, np.int8)
    ignored = 0
    # Two passes: count tokens per (line, slot), then fill.
    cap = token_capacity(buf, starts, ends)
    row_of = np.empty(cap, np.int64)
    col_of = np.empty(cap, np.int64)
    val_of = np.empty(cap, np.int64)
    t = 0
    for r in range(n):
        e = ends[r]
        p = starts[r]
        t0 = t
        bad = 0
        has_label = False
        while p < e:
            q, c = token_bounds(buf, p, e)
            if q == p:
                p = q + 1
                continue
            if c == p or c >= q - 1:
                bad = 6
                break
            h, bad = parse_uint64(buf, p, c)
            if bad:
                break
            sid, ok = _parse_int(buf, c + 1, q)
            if not ok or sid < 0:
                bad = 6
                break
            if sid == label_slot:
                if h > np.uint64(1):
                    bad = 1
                    break
                labels[r] = np.float32(h)
                has_label = True
            elif sid >= slot_of.shape[0] or slot_of[sid] < 0:
                ignored += 1
            else:
                row_of[t] = r
                col_of[t] = slot_of[sid]
                val_of[t] = np.int64(h)
                t += 1
            p = q + 1
        if bad == 0 and not has_label:
            bad = 1
        if bad:
            t = t0
        status[r] = bad
    return labels, row_of[:t], col_of[:t], val_of[:t], status, ignored


def _parse_lines(parse, buf, starts, ends, outputs, threads: int, *args) -> None:
    """``parse(buf, starts, ends, *args, *outputs)`` over the lines, in up to ``threads``
    runs of lines at once, each into its own rows of ``outputs`` (the parsers release the
    GIL, so the runs use as many cores)."""
    n = len(starts)
    k = max(1, min(threads, n // MIN_LINES_PER_THREAD))
    cuts = np.linspace(0, n, k + 1).astype(np.int64)

    def run(a: int, b: int) -> None:
        parse(buf, starts[a:b], ends[a:b], *args, *(o[a:b] for o in outputs))

    if k == 1:
        return run(0, n)
    with ThreadPoolExecutor(k - 1, "reader") as pool:
        rest = [pool.submit(run, a, b) for a, b in itertools.pairwise(cuts[1:])]
        run(cuts[0], cuts[1])  # this thread parses the first run
        for f in rest:
            f.result()


def _read_bytes(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8)


def _mark_truncated(buf: np.ndarray, ends: np.ndarray, status: np.ndarray) -> None:
    """A last line without its newline may be a partial write: never trusted, counted."""
    if len(ends) and len(buf) and buf[-1] != 10 and ends[-1] >= len(buf) - 1:
        status[-1] = 12


def _report(path: str, status: np.ndarray, line_numbers: np.ndarray) -> ReadReport:
    bad = np.flatnonzero(status)
    errors = [
        f"{os.path.basename(path)}:{int(line_numbers[i])}: {_REASONS[int(status[i])]}"
        for i in bad[:MAX_REPORTED]
    ]
    return ReadReport(lines=len(status), malformed=len(bad), first_errors=errors)


def tokens_to_csr(slots, rows, cols, vals, ok) -> tuple[dict, dict]:
    """Slot tokens (line, column, value; in line order) -> one CSR per slot over the kept
    lines (``ok``), renumbered 0..N-1; a line marked bad after parsing keeps no tokens."""
    new_row = np.cumsum(ok) - 1
    n = int(ok.sum())
    ids, offs = {}, {}
    for j, name in enumerate(slots):
        sel = (cols == j) & ok[rows]
        ids[name] = vals[sel]
        per_line = np.bincount(new_row[rows[sel]], minlength=n)
        offs[name] = np.concatenate([[0], np.cumsum(per_line)]).astype(np.int64)
    return ids, offs


@nb.njit(cache=True, nogil=True)
def _kept_slot_ids(cats, present, ok):
    """The IDs of the kept lines (``ok``), slot after slot, and each slot's CSR offsets
    over them ([slots, kept + 1]): one compiled pass, not a numpy mask per slot."""
    n, n_slots = cats.shape
    kept = 0
    for r in range(n):
        kept += ok[r]
    offsets = np.zeros((n_slots, kept + 1), np.int64)
    i = 0
    for r in range(n):
        if ok[r]:
            for j in range(n_slots):
                offsets[j, i + 1] = offsets[j, i] + present[r, j]
            i += 1
    bases = np.zeros(n_slots + 1, np.int64)
    for j in range(n_slots):
        bases[j + 1] = bases[j] + offsets[j, kept]
    ids = np.empty(bases[n_slots], np.int64)
    fill = bases[:n_slots].copy()
    for r in range(n):
        if ok[r]:
            for j in range(n_slots):
                if present[r, j]:
                    ids[fill[j]] = cats[r, j]
                    fill[j] += 1
    return ids, bases, offsets


def _single_valued(cats, present, ok, names) -> tuple[dict, dict]:
    """Each slot's IDs and CSR offsets over the kept lines (at most one ID per line)."""
    ids, bases, offsets = _kept_slot_ids(cats, present, ok)
    return ({name: ids[bases[j]:bases[j + 1]] for j, name in enumerate(names)},
            {name: offsets[j] for j, name in enumerate(names)})  # fmt: skip


def read_criteo(path: str, sep: str = "\t", threads: int = 1) -> tuple[Examples, ReadReport]:
    """Criteo display-ads lines: label, I1..I13, C1..C26; empty = missing, trailing
    fields may be trimmed. Integers become sign(x) * log1p(|x|); categoricals the value
    of their hex string (up to 16 digits). ``threads``: parse runs of lines at once."""
    buf = _read_bytes(path)
    starts, ends, line_no = _line_bounds(buf)
    n = len(starts)
    outputs = (np.zeros(n, np.float32), np.zeros((n, CRITEO_DENSE), np.float32),
               np.zeros((n, len(CRITEO_SLOTS)), np.int64),
               np.zeros((n, len(CRITEO_SLOTS)), np.bool_), np.zeros(n, np.int8))  # fmt: skip
    _parse_lines(_parse_criteo, buf, starts, ends, outputs, threads, ord(sep))
    labels, dense, cats, present, status = outputs
    _mark_truncated(buf, ends, status)
    report = _report(path, status, line_no)
    ok = status == 0
    ids, offs = _single_valued(cats, present, ok, CRITEO_SLOTS)
    return Examples(labels[ok], dense[ok], ids, offs, line_no[ok]), report


def read_avazu(path: str, threads: int = 1) -> tuple[Examples, ReadReport, np.ndarray]:
    """Avazu CSV (header optional). Every feature column is categorical (hashed string);
    returns the examples, the report and each kept line's ``hour`` (YYMMDDHH).
    ``threads``: parse runs of lines at once."""
    buf = _read_bytes(path)
    starts, ends, line_no = _line_bounds(buf)
    if len(starts) and bytes(buf[starts[0] : starts[0] + 3]) == b"id,":
        starts, ends, line_no = starts[1:], ends[1:], line_no[1:]
    n = len(starts)
    outputs = (np.zeros(n, np.float32), np.zeros(n, np.int64),
               np.zeros((n, len(AVAZU_SLOTS)), np.int64), np.zeros(n, np.int8))  # fmt: skip
    _parse_lines(_parse_avazu, buf, starts, ends, outputs, threads)
    labels, hours, cats, status = outputs
    _mark_truncated(buf, ends, status)
    report = _report(path, status, line_no)
    ok = status == 0
    ids, offs = _single_valued(cats, np.ones(cats.shape, np.bool_), ok, AVAZU_SLOTS)
    ex = Examples(labels[ok], np.zeros((ok.sum(), 0), np.float32), ids, offs, line_no[ok])
    return ex, report, hours[ok]


def read_slots(
    path: str, slots: tuple[str, ...], label_slot: int = 1
) -> tuple[Examples, ReadReport]:
    """Paddle's ``feasign:slot`` lines (slot_dnn demo). ``slots`` names the slot numbers
    to keep, e.g. ("2", "3", ...); tokens of other slots are skipped and counted
    (``ReadReport.ignored_tokens``), as a Paddle reader reading a subset of the slots does."""
    buf = _read_bytes(path)
    starts, ends, line_no = _line_bounds(buf)
    slot_numbers = [int(s) for s in slots]
    slot_of = np.full(max(slot_numbers + [label_slot]) + 1, -1, np.int64)
    slot_of[slot_numbers] = np.arange(len(slots))
    labels, rows, cols, vals, status, ignored = _parse_slots(buf, starts, ends, slot_of,
                                                             label_slot)  # fmt: skip
    _mark_truncated(buf, ends, status)
    report = _report(path, status, line_no)
    report.ignored_tokens = int(ignored)
    ok = status == 0
    ids, offs = tokens_to_csr(slots, rows, cols, vals, ok)
    n = int(ok.sum())
    return Examples(labels[ok], np.zeros((n, 0), np.float32), ids, offs, line_no[ok]), report
