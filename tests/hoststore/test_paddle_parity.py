"""Paddle's rules, one table-driven test each, against values computed by hand from Paddle's
source (paddle/fluid/distributed/ps/table: ctr_accessor.cc, sparse_sgd_rule.cc)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import hoststore as hs
from hoststore import optimizers as opt

DIM = 3


def _table(**kw) -> hs.EmbeddingTable:
    kw.setdefault("initializer", hs.zeros())
    return hs.EmbeddingTable(hs.TableConfig("t", DIM, **kw))


def _paddle_adagrad(w, g2sum, grad, show, lr, g0=3.0):
    """SparseAdaGradSGDRule::UpdateValueWork: scaled = grad / show; w -= lr * scaled *
    sqrt(g0 / (g0 + g2sum)); g2sum += mean(scaled^2). In float64."""
    scaled = np.asarray(grad, np.float64) / show
    w = np.asarray(w, np.float64) - lr * scaled * math.sqrt(g0 / (g0 + g2sum))
    return w, g2sum + float(np.mean(scaled**2))


@pytest.mark.parametrize(
    "occurrences, grads",
    [
        ([1], [[0.5, -1.0, 2.0]]),
        ([4], [[2.0, 2.0, -4.0]]),  # the gradient of 4 occurrences, divided by 4
        ([3, 1], [[0.3, 0.0, -0.9], [1.0, 1.0, 1.0]]),
    ],
)
def test_adagrad_divides_by_the_pushed_show(occurrences, grads):
    """A trainer pushes one summed gradient per distinct key with its occurrence count."""
    lr = 0.05
    keys = np.arange(len(occurrences), dtype=np.int64)
    counts = np.array(occurrences, np.float32)
    grads = np.array(grads, np.float32)
    t = _table(optimizer=opt.rowwise_adagrad(lr, paddle_style=True))
    for _ in range(2):  # two steps: the second sees the accumulated g2sum
        t.pull(keys, train=True, shows=counts)
        t.push(keys, grads, counts=counts, assume_unique=True)
    for i, n in enumerate(occurrences):
        w, g2 = np.zeros(DIM), 0.0
        for _ in range(2):
            w, g2 = _paddle_adagrad(w, g2, grads[i], n, lr)
        np.testing.assert_allclose(t.pull(keys[i : i + 1], train=False)[0], w, rtol=1e-5)
        assert t.row_stats(keys[i : i + 1])["show"][0] == 2 * n
    # The same update through duplicate ids in one push (the general path).
    u = _table(optimizer=opt.rowwise_adagrad(lr, paddle_style=True))
    dup = np.repeat(keys, occurrences)
    per = np.repeat(grads / counts[:, None], occurrences, axis=0)
    for _ in range(2):
        u.pull(dup, train=True)
        u.push(dup, per)
    np.testing.assert_allclose(u.pull(keys, train=False), t.pull(keys, train=False), rtol=1e-5)


def _seen(t, key, show, click):
    """A row with the given show and click, seen now."""
    ids = np.array([key], np.int64)
    t.pull(ids, train=True, shows=np.array([show], np.float32))
    t.push(ids, np.zeros((1, DIM), np.float32), clicks=np.array([click], np.float32))


@pytest.mark.parametrize(
    "eviction, rows, ticks, kept",
    [
        # delete_after_unseen_days = 2: deleted when unseen > 2 (kept at exactly 2).
        (hs.Eviction(unseen_ticks=2), {1: (5, 0)}, 2, [1]),
        (hs.Eviction(unseen_ticks=2), {1: (5, 0)}, 3, []),
        # delete_threshold = 0.5 on (show - click) * 0.1 + click * 1.0.
        # key 1: (4 - 0) * 0.1 = 0.4 < 0.5: deleted; key 2: (4 - 1) * 0.1 + 1 = 1.3: kept.
        (hs.Eviction(min_score=0.5), {1: (4, 0), 2: (4, 1)}, 0, [2]),
        # exactly at the threshold (0 * 0.1 + 1 * 1.0 = 1.0): kept, Paddle deletes below it
        (hs.Eviction(min_score=1.0), {1: (1, 1), 2: (2, 0)}, 0, [1]),
        # show_click_decay_rate = 0.9, applied before the threshold: key 1 scores
        # (6 - 0) * 0.1 = 0.6 >= 0.55 undecayed, 0.54 < 0.55 once decayed: deleted.
        (hs.Eviction(min_score=0.55), {1: (6, 0)}, 0, [1]),
        (hs.Eviction(min_score=0.55, shrink_decay=0.9), {1: (6, 0)}, 0, []),
    ],
)  # fmt: skip
def test_shrink_rules(eviction, rows, ticks, kept):
    t = _table(eviction=eviction)
    for key, (show, click) in rows.items():
        _seen(t, key, show, click)
    t.advance_clock(ticks)
    t.shrink()
    present = t.row_stats(np.array(sorted(rows), np.int64))["present"]
    assert [k for k, p in zip(sorted(rows), present, strict=True) if p] == kept


def test_shrink_decay_multiplies_show_and_click_once_per_shrink():
    t = _table(eviction=hs.Eviction(shrink_decay=0.98))
    _seen(t, 7, 10, 2)
    for n in range(1, 4):
        t.advance_clock(24)  # a day of hourly ticks between shrinks
        t.shrink()
        s = t.row_stats(np.array([7], np.int64))
        np.testing.assert_allclose([s["show"][0], s["click"][0]],
                                   [10 * 0.98**n, 2 * 0.98**n], rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    "kind, options, kept",
    [
        # xbox base: score >= base_threshold, score = (show - click) * 0.1 + click.
        # Scores: key 1: 0.5, key 2: 1.3, key 3: 3.0, key 4: 0.9.
        ("serving", {"min_score": 1.0}, [2, 3]),
        ("serving", {"min_score": 0.9}, [2, 3, 4]),
        ("serving", {}, [1, 2, 3, 4]),
        # save_cache_model: the top fraction by show (shows 5, 4, 3, 9).
        ("cache", {"cache_fraction": 0.5}, [1, 4]),
        ("cache", {"cache_fraction": 0.25}, [4]),
    ],
)  # fmt: skip
def test_serving_and_cache_exports_filter_like_paddle(tmp_path, kind, options, kept):
    from hoststore import snapshot as snap

    t = _table()
    for key, (show, click) in {1: (5, 0), 2: (4, 1), 3: (3, 3), 4: (9, 0)}.items():
        _seen(t, key, show, click)
    snap.save(t, str(tmp_path / kind), kind, **options)
    keys, weights = snap.load_serving(str(tmp_path / kind))
    assert sorted(keys.tolist()) == kept and weights.shape == (len(kept), DIM)
