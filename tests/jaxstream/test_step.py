"""Batching, pooling and the jitted step, checked against independent numpy/JAX computations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hoststore as hs
from jaxstream import models
from jaxstream.batching import bucket, make_batch
from jaxstream.data.examples import Examples
from jaxstream.features import FeatureSpec, SlotSpec, salt_ids
from jaxstream.step import make_steps, to_device

DIM = 4


def _spec(counts=False):
    tables = (hs.TableConfig("shared", DIM, initializer=hs.uniform(0.5)),
              hs.TableConfig("other", DIM, initializer=hs.uniform(0.5), seed=1))  # fmt: skip
    slots = (SlotSpec("a", "shared", "sum", 3), SlotSpec("b", "shared", "mean", 2),
             SlotSpec("c", "other", "sum", 1))  # fmt: skip
    return FeatureSpec(slots, tables, num_dense=2, counts=counts)


def _examples(n=6, seed=0):
    rng = np.random.default_rng(seed)
    ids, offs = {}, {}
    for s, maxn in (("a", 4), ("b", 3), ("c", 1)):
        lengths = rng.integers(0, maxn + 1, n)
        offs[s] = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        ids[s] = rng.integers(0, 5, lengths.sum()).astype(np.int64)  # small: many repeats
    labels = (rng.random(n) < 0.5).astype(np.float32)
    return Examples(labels, rng.normal(size=(n, 2)).astype(np.float32), ids, offs)


def _pooled_reference(spec, ex, store, batch_size):
    """Per-example pooled inputs straight from the store, no dedup, in numpy (with counts:
    log1p(show), log1p(click) - log1p(show) before the embedding)."""
    out = []
    for s in spec.slots:
        e = np.zeros((batch_size, spec.count_columns + DIM), np.float32)
        o = ex.slot_offsets[s.name]
        for i in range(len(ex)):
            raw = ex.slot_ids[s.name][o[i] : o[i + 1]][: s.max_len]
            if len(raw):
                rows = store.table(s.table).pull(
                    salt_ids(raw, s.name), train=False, with_counts=spec.counts
                )
                if spec.counts:
                    log_show = np.log1p(rows[:, 0])
                    rows = np.column_stack([log_show, np.log1p(rows[:, 1]) - log_show, rows[:, 2:]])
                e[i] = rows.sum(0) / (len(raw) if s.pooling == "mean" else 1)
        out.append(e)
    return out


def test_batch_dedups_per_table_and_counts_shows_and_clicks():
    spec, ex = _spec(), _examples()
    hb = make_batch(ex, spec, 8)
    assert hb.size == 6 and hb.weights.tolist() == [1] * 6 + [0] * 2
    assert hb.padded_rows("shared") == bucket(len(hb.unique_ids["shared"]))
    clicks, shows = {}, {}
    for s in spec.slots:
        o = ex.slot_offsets[s.name]
        for i in range(len(ex)):
            raw = ex.slot_ids[s.name][o[i] : o[i + 1]][: s.max_len]
            keys = salt_ids(raw, s.name)
            got = hb.unique_ids[s.table][hb.index[s.name][i, : len(raw)]]
            np.testing.assert_array_equal(got, keys)
            assert hb.mask[s.name][i].sum() == len(raw)
            for k in keys.tolist():
                clicks[(s.table, k)] = clicks.get((s.table, k), 0) + ex.labels[i]
                shows[(s.table, k)] = shows.get((s.table, k), 0) + 1
    for t in ("shared", "other"):
        assert len(set(hb.unique_ids[t].tolist())) == len(hb.unique_ids[t])
        for k, c, n in zip(hb.unique_ids[t].tolist(), hb.clicks[t], hb.shows[t]):
            assert c == clicks[(t, k)] and n == shows[(t, k)] >= c
    # The same raw value in two slots is two features.
    assert salt_ids(np.array([3]), "a")[0] != salt_ids(np.array([3]), "b")[0]


@pytest.mark.parametrize("counts", [False, True], ids=["plain", "cvm"])
def test_step_row_grads_match_per_example_gradients(counts):
    spec, ex = _spec(counts), _examples(seed=1)
    store = hs.store.LocalStore(spec.tables)
    hb = make_batch(ex, spec, 8)
    for t, ids in hb.unique_ids.items():  # rows, and counters that are not all zero
        store.pull(t, ids, train=True)
        store.pull(t, ids[::2], train=True)
        store.push(t, ids[::3], np.zeros((len(ids[::3]), DIM), np.float32),
                   clicks=np.ones(len(ids[::3])))  # fmt: skip
    rows = {t: store.pull(t, hb.unique_ids[t], train=False, with_counts=counts)
            for t in hb.unique_ids}  # fmt: skip
    padded = {t: np.pad(r, ((0, hb.padded_rows(t) - len(r)), (0, 0))) for t, r in rows.items()}
    model = models.build("dnn", spec.slot_dims(), 2, hidden=(8,))
    graphdef, params = nnx.split(model)
    tx = optax.sgd(0.0)
    train_fn, eval_fn = make_steps(graphdef, tx, spec)
    db = hb.device_batch(padded)
    preds_eval = eval_fn(params, db)
    # The step donates its params, so give it a copy.
    _, _, row_grads, preds, loss_sum = train_fn(jax.tree.map(jnp.copy, params), tx.init(params), db)
    np.testing.assert_allclose(preds, preds_eval, rtol=1e-6)

    # Independent route: pooled embeddings as direct inputs, gradient of the summed loss,
    # then scattered back to rows by hand.
    pooled = _pooled_reference(spec, ex, store, 8)

    def loss(pooled):
        logits = nnx.merge(graphdef, params)(pooled, jnp.asarray(hb.dense))
        return (optax.sigmoid_binary_cross_entropy(logits, hb.labels) * hb.weights).sum()

    g_pooled = jax.grad(loss)(pooled)
    assert float(loss(pooled)) == pytest.approx(float(loss_sum), rel=1e-5)
    for t in hb.unique_ids:
        ref = np.zeros((hb.padded_rows(t), DIM), np.float32)
        for s_i, s in enumerate(spec.slots):
            if s.table != t:
                continue
            m = hb.mask[s.name]
            scale = np.maximum(m.sum(1, keepdims=True), 1) if s.pooling == "mean" else 1.0
            g = np.asarray(g_pooled[s_i])[:, spec.count_columns :] / scale
            for i, j in zip(*np.nonzero(m)):
                ref[hb.index[s.name][i, j]] += g[i]
        np.testing.assert_allclose(np.asarray(row_grads[t]), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_trains(name):
    spec, ex = _spec(), _examples(n=16, seed=2)
    store = hs.store.LocalStore(spec.tables)
    hb = make_batch(ex, spec, 16)
    rows = {t: np.pad(store.pull(t, hb.unique_ids[t], train=True),
                      ((0, hb.padded_rows(t) - len(hb.unique_ids[t])), (0, 0)))
            for t in hb.unique_ids}  # fmt: skip
    db = hb.device_batch(rows)
    graphdef, params = nnx.split(models.build(name, spec.slot_dims(), 2, hidden=(16, 16)))
    tx = optax.adam(0.05)
    train_fn, _ = make_steps(graphdef, tx, spec)
    opt_state = tx.init(params)
    losses = []
    for _ in range(30):
        params, opt_state, _, _, loss = train_fn(params, opt_state, db)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_large_count_features_do_not_saturate_a_model(name):
    """With CVM each slot's input starts with log(show + 1), log(click + 1) - log(show + 1)
    of its ID: about 13.8 and -3.9 for an ID shown a million times at a 2% CTR. Fed to the
    interactions (FM, DLRM's dot products, DCN's crosses) their products put a fresh
    model's logits in the thousands (DeepFM with --cvm trained to a log loss of 13 on the
    smoke stream); the interactions take the embeddings only."""
    slots, dim, c, batch = 8, 8, 2, 64
    model = models.build(name, [dim + c] * slots, 3, hidden=(16, 16), count_columns=c)
    rng = np.random.default_rng(0)
    counts = np.broadcast_to(np.array([13.8, -3.9], np.float32), (batch, c))
    embeddings = [jnp.asarray(np.concatenate(
        [counts, 0.01 * rng.standard_normal((batch, dim), np.float32)], axis=1))
        for _ in range(slots)]  # fmt: skip
    logits = np.asarray(model(embeddings, jnp.zeros((batch, 3), jnp.float32)))
    assert np.isfinite(logits).all() and np.abs(logits).max() < 50, np.abs(logits).max()


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        models.build("nope", [4], 1)


@pytest.mark.parametrize("threads", [2, 3])
def test_batches_built_in_threads_come_out_in_order_and_equal(threads):
    """Several batcher threads: the same batches, in the same order, padding batches
    included; a consumer that stops early stops them."""
    from jaxstream.batching import batches

    spec, ex = _spec(), _examples(n=50, seed=3)
    want = list(batches(ex, spec, 8, min_batches=9))
    got = list(batches(ex, spec, 8, min_batches=9, threads=threads))
    assert len(got) == len(want) == 9
    for a, b in zip(got, want, strict=True):
        assert a.size == b.size
        np.testing.assert_array_equal(a.labels, b.labels)
        for t in a.unique_ids:
            np.testing.assert_array_equal(a.unique_ids[t], b.unique_ids[t])
            np.testing.assert_array_equal(a.table_index[t], b.table_index[t])
    stream = batches(ex, spec, 8, threads=threads)
    next(stream)
    stream.close()  # returns once the threads finish the batches in flight


@pytest.mark.parametrize("budget_batches", [0, 3, 100])
def test_a_partitions_batches_are_built_once_for_both_passes_within_the_budget(budget_batches):
    """Evaluation builds the partition's batches and keeps those within the budget;
    training gets the same batches again, building only those past it."""
    from jaxstream.batching import TwoPasses, batches

    spec, ex = _spec(), _examples(n=50, seed=3)
    want = list(batches(ex, spec, 8, min_batches=9))
    built = []

    def make(first, training):
        for hb in batches(ex, spec, 8, min_batches=9, threads=1 + training, first=first):
            built.append(hb)
            yield hb

    budget = sum(hb.nbytes for hb in want[:budget_batches])
    two = TwoPasses(make, budget)
    for got in (list(two.first()), list(two.again())):
        assert len(got) == len(want) == 9
        for a, b in zip(got, want, strict=True):
            assert a.size == b.size
            for t in a.unique_ids:
                for x, y in ((a.unique_ids, b.unique_ids), (a.table_index, b.table_index),
                             (a.table_mask, b.table_mask), (a.shows, b.shows),
                             (a.clicks, b.clicks)):  # fmt: skip
                    np.testing.assert_array_equal(x[t], y[t])
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.dense, b.dense)
    assert len(built) == 9 + max(0, 9 - budget_batches)  # the kept ones are not built again
    assert not two._kept  # and are let go once handed out


def test_to_device_copies_the_numpy_batch():
    # 64-byte aligned numpy memory is what jax.device_put aliases instead of copying.
    buf = np.zeros(1024 + 64, np.uint8)
    off = -buf.ctypes.data % 64
    aligned = buf[off : off + 1024].view(np.float32)
    aligned[:] = 1.0
    tree = {"a": aligned, "b": np.arange(6, dtype=np.int32).reshape(2, 3)}
    moved = to_device(tree)
    aligned[:] = 7.0  # the pipeline's next batch may reuse host memory
    assert isinstance(moved["a"], jax.Array)
    np.testing.assert_array_equal(np.asarray(moved["a"]), np.ones(256, np.float32))
    np.testing.assert_array_equal(np.asarray(moved["b"]), tree["b"])
    assert moved["b"].dtype == jnp.int32
    with pytest.raises(TypeError, match="device arrays"):
        to_device({"a": moved["a"]})  # a device array would be donated (deleted)
