"""Compiled hot paths of :mod:`hoststore.table`; all release the GIL."""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.core import cgutils
from numba.extending import intrinsic

from hoststore import _index as ix
from hoststore._prefetch import prefetch, prefetch_row

# How many rows ahead the row loops below prefetch: enough to cover a memory latency.
_AHEAD = 16


@intrinsic
def pointer(typingctx, address):
    """A void pointer from an integer address, for ``nb.carray(pointer(a), n, dtype)``:
    compiled code then reads arrays named in a table of addresses. Numba's typed lists
    would do the same safely but cost ~3.5 us each a call to unbox (a disk-tier lookup
    passed three: more than its reads when a batch brings a few keys from disk). Whoever
    builds such a table keeps the arrays alive and in place while it is used."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return nb.types.voidptr(address), codegen


@nb.njit(inline="always", cache=True)
def touch(meta, r, clock, decay, gen_now):
    """Brings row ``r``'s decayed show/click up to ``clock``, marks it seen and changed in
    generation ``gen_now`` (snapshots take every row changed after their parent's generation).

    ``meta`` is the rows' record array (:data:`hoststore._rows.META`), passed whole. Given
    the record's columns as five separate arrays, this helper cost ~70 ns a call inside
    the kernels below (measured: a 17K-id push's statistics took 1.28 ms, 0.29 ms with
    the record array), though not in a small loop alone.
    """
    rec = meta[r]
    dt = clock - rec["last_seen"]
    if decay != 1.0 and dt > 0:
        f = decay ** np.float64(dt)
        rec["show"] = np.float32(rec["show"] * f)
        rec["click"] = np.float32(rec["click"] * f)
    rec["last_seen"] = clock
    rec["gen"] = gen_now


@nb.njit(inline="always", cache=True)
def count(meta, r, shows, clicks, nonclk, clk):
    """Adds ``shows`` and ``clicks`` to row ``r``'s statistics and their score to its delta
    score (a show scores ``nonclk``, a click ``clk`` - ``nonclk`` more: Paddle's show/click
    score, which is linear)."""
    rec = meta[r]
    rec["show"] += shows
    rec["click"] += clicks
    rec["delta_score"] += nonclk * shows + (clk - nonclk) * clicks


@nb.njit(nogil=True, cache=True)
def pull_existing(
    index, keys, meta, emb, gen_now, ids, shows, out, rows, default, train, clock, decay, nonclk,
):  # fmt: skip
    """Copies the rows of known ids into ``out``; ``rows[i] = -1`` marks the rest. A
    training pull adds ``shows[i]`` (the occurrences ids[i] stands for) to its row's show,
    and their score (``nonclk`` per show) to its delta score.

    Keys are found a group at a time and each group is copied and touched while its
    records are still in cache. An ``out`` without columns copies nothing (a pass's
    statistics: its rows are read once later), and its embeddings are not prefetched.
    """
    n = ids.shape[0]
    dim = out.shape[1]
    homes, tags, cands = ix.group_buffers()
    flat = emb.reshape(-1)
    n_miss = 0
    for base in range(0, n, ix.GROUP):
        m = min(ix.GROUP, n - base)
        ix.find_group(index, keys, ids, base, m, homes, tags, cands, rows, flat,
                      emb.shape[1] if dim else 0)  # fmt: skip
        for i in range(base, base + m):
            r = rows[i]
            if r >= 0:
                for j in range(dim):
                    out[i, j] = emb[r, j]
                if train:
                    touch(meta, r, clock, decay, gen_now)
                    # (a pull counts shows; the clicks come with the batch's push)
                    count(meta, r, shows[i], np.float32(0.0), nonclk, nonclk)
            else:
                n_miss += 1
                for j in range(dim):
                    out[i, j] = default
    return n_miss


@nb.njit(nogil=True, cache=True)
def gather_push(
    index, keys, meta, ids, grads, shows, clicks, weights, clock, decay, gen_now, nonclk, clk,
):  # fmt: skip
    """Looks ids up, updates the statistics of their rows and sums duplicate gradients.

    Returns (unique rows, summed grads, summed ``weights`` (the occurrences each gradient
    stands for), positions of ids without a row). Statistics are updated while the row's
    record is in cache: show, click and the delta score per id (:func:`count`).
    """
    n = ids.shape[0]
    dim = grads.shape[1]
    rows = np.empty(n, np.int64)
    missing = np.empty(n, np.int64)
    scratch = np.full(int(n / ix.MAX_LOAD) + 9, -1, np.int32)
    urows = np.empty(n, np.int64)
    agg = np.empty((n, dim), np.float32)
    counts = np.zeros(n, np.float32)
    homes, tags, cands = ix.group_buffers()
    u = 0
    m = 0
    for base in range(0, n, ix.GROUP):
        g = min(ix.GROUP, n - base)
        ix.find_group(index, keys, ids, base, g, homes, tags, cands, rows, ix.NO_ROWS, 0)
        for i in range(base, base + g):
            r = rows[i]
            if r < 0:
                missing[m] = i
                m += 1
                continue
            p, u_next = ix.find_or_append(scratch, urows, r, u)
            if u_next > u:  # first occurrence of this row in the push
                u = u_next
                touch(meta, r, clock, decay, gen_now)
                for j in range(dim):
                    agg[p, j] = grads[i, j]
            else:
                for j in range(dim):
                    agg[p, j] += grads[i, j]
            counts[p] += weights[i]
            count(meta, r, shows[i], clicks[i], nonclk, clk)
    return urows[:u], agg[:u], counts[:u], missing[:m]


@nb.njit(nogil=True, cache=True)
def pop_links(links, head, out):
    """Takes ``len(out)`` entries off a free list linked through ``links`` (each free
    entry's ``links`` holds the next one) starting at ``head``; returns the new head. A
    broken list raises rather than reading outside ``links``."""
    for i in range(out.shape[0]):
        if head < 0 or head >= links.shape[0]:
            raise IndexError("the free list of pending counters is broken")
        out[i] = head
        head = links[head]
    return head


@nb.njit(nogil=True, cache=True)
def insert_rows(index, keys, new_keys, rows):
    for i in range(rows.shape[0]):
        keys[rows[i]] = new_keys[i]
        ix.insert(index, keys, new_keys[i], rows[i])


@nb.njit(nogil=True, cache=True)
def touch_push_unique(
    index, keys, meta, ids, hint, shows, clicks, clock, decay, gen_now, nonclk, clk,
):  # fmt: skip
    """``gather_push`` for ids known to be distinct: no dedup, no gradient copy.

    ``hint`` holds each id's row as a recent pull found it (or is empty); a hinted row is
    used only if it still holds that key, otherwise the index is probed. Returns
    (row of each id or -1, number of ids without a row).
    """
    n = ids.shape[0]
    rows = np.empty(n, np.int64)
    hinted = hint.shape[0] == n
    if not hinted:
        ix.find_many(index, keys, ids, rows)
    n_miss = 0
    for i in range(n):
        if hinted and i + _AHEAD < n and hint[i + _AHEAD] >= 0:
            prefetch(meta, hint[i + _AHEAD])  # the row's key + statistics record
        if hinted:
            r = hint[i]
            if r < 0 or meta[r]["created"] < 0 or keys[r] != ids[i]:
                r = ix.find(index, keys, ids[i])
            rows[i] = r
        r = rows[i]
        if r < 0:
            n_miss += 1
            continue
        touch(meta, r, clock, decay, gen_now)
        count(meta, r, shows[i], clicks[i], nonclk, clk)
    return rows, n_miss


@nb.njit(nogil=True, cache=True)
def gather_rows(src, rows, out):
    """out[i] = src[rows[i]] for 2-D ``src`` (C order), prefetching rows ahead."""
    n = rows.shape[0]
    width = src.shape[1]
    flat = src.reshape(-1)
    for i in range(n):
        if i + _AHEAD < n:
            prefetch_row(flat, rows[i + _AHEAD], width)
        r = rows[i]
        for j in range(width):
            out[i, j] = src[r, j]


@nb.njit(nogil=True, cache=True)
def scatter_rows(dst, rows, block):
    """dst[rows[i]] = block[i] (rows distinct)."""
    width = dst.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        for j in range(width):
            dst[r, j] = block[i, j]


@nb.njit(nogil=True, cache=True)
def scatter_records(recs, rows, plan, cap):
    """Copies each record (``recs[i]``, bytes) into the columns of row ``rows[i]``: plan
    entry p copies ``plan[p, 3]`` bytes from ``recs[i, plan[p, 2]:]`` to address
    ``plan[p, 0] + row * plan[p, 1]`` (a column's first row and its row stride). Returns
    -1, copying nothing, when a row is not below ``cap`` (the rows the columns hold)."""
    for i in range(rows.shape[0]):
        if rows[i] < 0 or rows[i] >= cap:
            return -1
    for i in range(rows.shape[0]):
        for p in range(plan.shape[0]):
            dst = nb.carray(pointer(plan[p, 0] + rows[i] * plan[p, 1]), plan[p, 3], np.uint8)
            src = plan[p, 2]
            for b in range(plan[p, 3]):
                dst[b] = recs[i, src + b]
    return 0


@nb.njit(nogil=True, cache=True)
def least_recent(touch, created, n):
    """The ``n`` live rows (``created >= 0``) of smallest ``touch``, in row order; ties at
    the cut go to the lower rows. A radix select in three sequential passes (the high 16
    bits' histogram, the low 16 bits' in the bucket that holds the n-th, then the pick):
    an argpartition of every live row costs ~10x as much, and the spill runs it often."""
    high = np.zeros(1 << 16, np.int64)
    for r in range(created.shape[0]):
        if created[r] >= 0:
            high[touch[r] >> 16] += 1
    below, hb = 0, 0
    while below + high[hb] < n:
        below += high[hb]
        hb += 1
    low = np.zeros(1 << 16, np.int64)
    for r in range(created.shape[0]):
        if created[r] >= 0 and touch[r] >> 16 == hb:
            low[touch[r] & 0xFFFF] += 1
    lb = 0
    while below + low[lb] < n:
        below += low[lb]
        lb += 1
    cut = np.uint32((hb << 16) | lb)  # every row below it goes, and n - below rows at it
    at_cut = n - below
    out = np.empty(n, np.int64)
    k = 0
    for r in range(created.shape[0]):
        if created[r] >= 0:
            t = touch[r]
            if t < cut or (t == cut and at_cut > 0):
                if t == cut:
                    at_cut -= 1
                out[k] = r
                k += 1
    return out
