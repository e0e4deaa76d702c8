"""PaddleRec's ``name:value`` lines (its Criteo samples): ``click:<0|1>``, then
``dense_feature:<float>`` tokens (the dense vector, in order), then ``<k>:<id>`` slot tokens
(a slot may repeat: multi-valued). One compiled pass, like the other readers."""

from __future__ import annotations

import numba as nb
import numpy as np

from jaxstream.data.examples import Examples, ReadReport
from jaxstream.data.readers import (
    _line_bounds,
    _mark_truncated,
    _read_bytes,
    _report,
    parse_uint64,
    token_bounds,
    token_capacity,
    tokens_to_csr,
)

_LABEL = np.frombuffer(b"click", np.uint8)
_DENSE = np.frombuffer(b"dense_feature", np.uint8)


@nb.njit(inline="always", cache=True)
def _is(buf, a, b, word):
    if b - a != word.shape[0]:
        return False
    for i in range(b - a):
        if buf[a + i] != word[i]:
            return False
    return True


@nb.njit(cache=True, nogil=True)
def _parse_float(buf, a, b):
    """Decimal float in buf[a:b] (sign, digits, '.', digits, exponent); (value, ok)."""
    if a == b:
        return 0.0, False
    neg = buf[a] == 45
    if neg or buf[a] == 43:
        a += 1
    v, digits, scale, i = 0.0, 0, 0, a
    while i < b and 48 <= buf[i] <= 57:
        v = v * 10.0 + (buf[i] - 48)
        digits += 1
        i += 1
    if i < b and buf[i] == 46:
        i += 1
        while i < b and 48 <= buf[i] <= 57:
            v = v * 10.0 + (buf[i] - 48)
            scale -= 1
            digits += 1
            i += 1
    if digits == 0:
        return 0.0, False
    if i < b and (buf[i] == 101 or buf[i] == 69):
        i += 1
        eneg = i < b and buf[i] == 45
        if i < b and (buf[i] == 45 or buf[i] == 43):
            i += 1
        e, edigits = 0, 0
        while i < b and 48 <= buf[i] <= 57:
            e = min(e * 10 + (buf[i] - 48), 100_000)  # saturates: never wraps to a small one
            edigits += 1
            i += 1
        if edigits == 0:
            return 0.0, False
        scale += -e if eneg else e
    if i != b:
        return 0.0, False
    v *= 10.0**scale
    return (-v if neg else v), True


@nb.njit(cache=True, nogil=True)
def _parse(buf, starts, ends, slot_of, num_dense, label_word, dense_word):
    n = starts.shape[0]
    labels = np.zeros(n, np.float32)
    dense = np.zeros((n, num_dense), np.float32)
    status = np.zeros(n, np.int8)
    cap = token_capacity(buf, starts, ends)
    row_of = np.empty(cap, np.int64)
    col_of = np.empty(cap, np.int64)
    val_of = np.empty(cap, np.int64)
    t, ignored = 0, 0
    for r in range(n):
        e, p, t0, bad, has_label, d = ends[r], starts[r], t, 0, False, 0
        while p < e and bad == 0:
            q, c = token_bounds(buf, p, e)
            if q == p:
                p = q + 1
                continue
            if c == p or c >= q - 1:
                bad = 9
            elif _is(buf, p, c, label_word):
                if q - c != 2 or (buf[c + 1] != 48 and buf[c + 1] != 49):
                    bad = 1
                else:
                    labels[r] = buf[c + 1] - 48
                    has_label = True
            elif _is(buf, p, c, dense_word):
                x, ok = _parse_float(buf, c + 1, q)
                if not ok:
                    bad = 10
                elif not np.isfinite(x):
                    bad = 14
                elif d >= num_dense:
                    bad = 11
                else:
                    dense[r, d] = x
                    d += 1
            else:
                sid, bad = parse_uint64(buf, p, c)
                h, bad_value = parse_uint64(buf, c + 1, q)
                if bad == 0:
                    bad = bad_value
                if bad == 6:
                    bad = 9  # (this format's name:value reason)
                if bad == 0:
                    if sid < np.uint64(slot_of.shape[0]) and slot_of[sid] >= 0:
                        row_of[t] = r
                        col_of[t] = slot_of[sid]
                        val_of[t] = np.int64(h)
                        t += 1
                    else:
                        ignored += 1
            p = q + 1
        if bad == 0 and not has_label:
            bad = 1
        if bad == 0 and d != num_dense:
            bad = 11
        if bad:
            t = t0
        status[r] = bad
    return labels, dense, row_of[:t], col_of[:t], val_of[:t], status, ignored


def read_paddlerec(
    path: str, slots: tuple[str, ...], num_dense: int = 13
) -> tuple[Examples, ReadReport]:
    """PaddleRec ``name:value`` lines. ``slots`` names the slot numbers to keep (e.g. "1"
    .. "26"); tokens of other slots are skipped and counted. Each line must carry its label
    and exactly ``num_dense`` dense values, or it is malformed (counted, skipped)."""
    buf = _read_bytes(path)
    starts, ends, line_no = _line_bounds(buf)
    numbers = [int(s) for s in slots]
    slot_of = np.full(max(numbers, default=0) + 1, -1, np.int64)
    slot_of[numbers] = np.arange(len(slots))
    labels, dense, rows, cols, vals, status, ignored = _parse(
        buf, starts, ends, slot_of, num_dense, _LABEL, _DENSE
    )
    _mark_truncated(buf, ends, status)
    report = _report(path, status, line_no)
    report.ignored_tokens = int(ignored)
    ok = status == 0
    ids, offs = tokens_to_csr(slots, rows, cols, vals, ok)
    return Examples(labels[ok], dense[ok], ids, offs, line_no[ok]), report
