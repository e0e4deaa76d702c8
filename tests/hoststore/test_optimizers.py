"""Sparse optimizers against dense references: optax where it has the rule, by hand elsewhere."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hoststore as hs
from hoststore import optimizers as opt

N, DIM, STEPS = 6, 4, 5


def _grads(seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(N, DIM)).astype(np.float32) for _ in range(steps)]


def _run_sparse(o, w0, grads, counts=None):
    w, s = w0, o.init(N, DIM)
    for t, g in enumerate(grads):
        w, s = o.update(g, s, w, clock=t, counts=counts)
    return w


def _run_optax(tx, w0, grads):
    w = jnp.asarray(w0)
    s = tx.init(w)
    for g in grads:
        u, s = tx.update(jnp.asarray(g), s, w)
        w = optax.apply_updates(w, u)
    return np.asarray(w)


@pytest.mark.parametrize(
    "sparse, dense, atol",
    [
        (opt.sgd(0.1), optax.sgd(0.1), 1e-7),
        (opt.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7),
         optax.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7), 1e-7),
        (opt.adagrad(0.3, initial_accumulator_value=0.0, eps=1e-6),
         optax.adagrad(0.3, initial_accumulator_value=0.0, eps=1e-6), 1e-7),
        # Lazy Adam equals dense Adam when every row gets a gradient at every step (ours
        # computes the moments in float64, optax in float32: hence the looser tolerance).
        (opt.adam(0.01), optax.adam(0.01), 1e-6),
    ],
    ids=["sgd", "adagrad", "adagrad_zero_init", "adam_all_rows_touched"],
)  # fmt: skip
def test_matches_optax_on_touched_rows(sparse, dense, atol):
    w0 = np.random.default_rng(1).normal(size=(N, DIM)).astype(np.float32)
    grads = _grads()
    np.testing.assert_allclose(
        _run_sparse(sparse, w0, grads), _run_optax(dense, w0, grads), rtol=2e-6, atol=atol
    )


def test_sgd_schedule_reads_the_clock():
    o = opt.sgd(lambda clock: 0.1 * (clock + 1))
    w, _ = o.update(np.ones((1, 2), np.float32), (), np.zeros((1, 2), np.float32), clock=2)
    np.testing.assert_allclose(w, -0.3)


def _lazy_adam_reference(w0, grads, masks, lr=0.01, b1=0.9, b2=0.999, eps=1e-8):
    """Hand-written lazy Adam: untouched rows keep weights, moments and step count."""
    w = w0.astype(np.float64).copy()
    m, v, t = np.zeros_like(w), np.zeros_like(w), np.zeros(N)
    for g, mask in zip(grads, masks):
        for r in np.flatnonzero(mask):
            t[r] += 1
            m[r] = b1 * m[r] + (1 - b1) * g[r]
            v[r] = b2 * v[r] + (1 - b2) * g[r] ** 2
            mh, vh = m[r] / (1 - b1 ** t[r]), v[r] / (1 - b2 ** t[r])
            w[r] -= lr * mh / (np.sqrt(vh) + eps)
    return w


def test_lazy_adam_skips_untouched_rows_and_differs_from_dense():
    rng = np.random.default_rng(2)
    w0 = rng.normal(size=(N, DIM)).astype(np.float32)
    grads = _grads(3, steps=8)
    masks = [rng.random(N) < 0.5 for _ in grads]
    o = opt.adam(0.01)
    w, s = w0, o.init(N, DIM)
    for g, mask in zip(grads, masks):
        rows = np.flatnonzero(mask)
        wr, sr = o.update(g[rows], tuple(x[rows] for x in s), w[rows])
        w, s = w.copy(), tuple(x.copy() for x in s)
        w[rows] = wr
        for x, y in zip(s, sr):
            x[rows] = y
    np.testing.assert_allclose(w, _lazy_adam_reference(w0, grads, masks), rtol=1e-5, atol=1e-6)
    dense = _run_optax(optax.adam(0.01), w0, [g * m[:, None] for g, m in zip(grads, masks)])
    assert not np.allclose(w, dense, atol=1e-4), "lazy Adam should differ from dense Adam here"


def _rowwise_reference(w0, grads, lr, eps=1e-8, counts=None, paddle=False, g0=3.0):
    w = w0.astype(np.float64).copy()
    acc = np.zeros(N)
    for g in grads:
        g = g.astype(np.float64)
        if paddle:
            g = g / counts[:, None]
            w -= lr * g * np.sqrt(g0 / (g0 + acc))[:, None]
            acc += (g**2).mean(1)
        else:
            acc += (g**2).mean(1)
            w -= lr * g / (np.sqrt(acc) + eps)[:, None]
    return w


def test_rowwise_adagrad():
    w0 = np.random.default_rng(4).normal(size=(N, DIM)).astype(np.float32)
    grads = _grads(5)
    np.testing.assert_allclose(
        _run_sparse(opt.rowwise_adagrad(0.1), w0, grads),
        _rowwise_reference(w0, grads, 0.1),
        rtol=1e-5,
    )


def test_paddle_rowwise_adagrad_scales_by_show():
    w0 = np.random.default_rng(6).normal(size=(N, DIM)).astype(np.float32)
    grads = _grads(7)
    counts = np.arange(1, N + 1, dtype=np.float32)
    got = _run_sparse(opt.rowwise_adagrad(0.1, paddle_style=True), w0, grads, counts)
    np.testing.assert_allclose(
        got, _rowwise_reference(w0, grads, 0.1, counts=counts, paddle=True), rtol=1e-5
    )


def _ftrl_reference(grads, alpha, beta, l1, l2):
    """McMahan et al. 2013, algorithm 1, written per coordinate in float64."""
    z = np.zeros((N, DIM))
    n = np.zeros((N, DIM))
    w = np.zeros((N, DIM))
    for g in grads:
        for i in range(N):
            for j in range(DIM):
                sigma = (math.sqrt(n[i, j] + g[i, j] ** 2) - math.sqrt(n[i, j])) / alpha
                z[i, j] += g[i, j] - sigma * w[i, j]
                n[i, j] += g[i, j] ** 2
                if abs(z[i, j]) <= l1:
                    w[i, j] = 0.0
                else:
                    w[i, j] = -(z[i, j] - np.sign(z[i, j]) * l1) / (
                        (beta + math.sqrt(n[i, j])) / alpha + l2
                    )
    return w


@pytest.mark.parametrize("l1, l2", [(0.0, 0.0), (0.5, 0.1)])
def test_ftrl(l1, l2):
    grads = _grads(8)
    got = _run_sparse(opt.ftrl(0.2, beta=1.0, l1=l1, l2=l2), np.zeros((N, DIM), np.float32), grads)
    ref = _ftrl_reference(grads, 0.2, 1.0, l1, l2)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    if l1 > 0:
        assert (got == 0).any(), "L1 should zero some coordinates"


@pytest.mark.parametrize(
    "name", ["sgd", "adagrad", "rowwise_adagrad", "paddle_adagrad", "adam", "ftrl"]
)
def test_update_is_pure_and_bounds_clip(name):
    o = opt.from_name(name, 10.0)
    w0 = np.zeros((N, DIM), np.float32)
    s0 = o.init(N, DIM)
    s_copy = tuple(x.copy() for x in s0)
    g = np.ones((N, DIM), np.float32)
    w, _ = o.update(g, s0, w0, bounds=(-0.5, 0.5))
    assert (w0 == 0).all() and all((a == b).all() for a, b in zip(s0, s_copy))
    assert (w >= -0.5).all() and (w <= 0.5).all() and (w < 0).all()


def test_table_push_matches_pure_update_on_touched_rows():
    cfg = hs.TableConfig("t", DIM, optimizer=opt.adagrad(0.2), initializer=hs.uniform(0.1))
    table = hs.EmbeddingTable(cfg)
    ids = np.array([5, 9, 5, -3], np.int64)
    w0 = table.pull(ids, train=True)
    grads = np.arange(4 * DIM, dtype=np.float32).reshape(4, DIM) / 10
    table.push(ids, grads)
    summed = np.stack([grads[0] + grads[2], grads[1], grads[3]])
    ref, _ = cfg.optimizer.update(summed, cfg.optimizer.init(3, DIM), w0[[0, 1, 3]])
    np.testing.assert_allclose(table.pull(np.array([5, 9, -3]), train=False), ref, rtol=1e-6)


def test_unknown_optimizer_name():
    with pytest.raises(ValueError, match="unknown sparse optimizer 'nope'"):
        opt.from_name("nope", 0.1)
