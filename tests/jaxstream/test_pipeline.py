"""The overlapped pipeline: equal to a plain loop at staleness 0, and errors never hang."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hoststore as hs
from hoststore.store import LocalStore
from jaxstream import models
from jaxstream.batching import batches, make_batch
from jaxstream.data.examples import Examples
from jaxstream.data.readers import CRITEO_SLOTS
from jaxstream.data.synthetic import StreamConfig, SyntheticStream
from jaxstream.features import single_table_spec
from jaxstream.pipeline import PipelineError, run_pass
from jaxstream.step import make_steps

BATCH = 256


def _setup():
    part = SyntheticStream(StreamConfig(hours=1, rows_per_hour=1500, max_vocab=2000)).hour(0)
    n = len(part["labels"])
    offs = {s: np.concatenate([[0], np.cumsum(part["present"][:, j])]).astype(np.int64)
            for j, s in enumerate(CRITEO_SLOTS)}  # fmt: skip
    ids = {s: part["cats"][part["present"][:, j], j] for j, s in enumerate(CRITEO_SLOTS)}
    ex = Examples(part["labels"].astype(np.float32),
                  np.log1p(part["dense"]).astype(np.float32), ids, offs)  # fmt: skip
    table = hs.TableConfig("embedding", 4, optimizer=hs.optimizers.adagrad(0.1),
                           admission=hs.count_filter(2))  # fmt: skip
    spec = single_table_spec(CRITEO_SLOTS, 13, table)
    assert n == len(ex)
    graphdef, params = nnx.split(models.build("dnn", spec.slot_dims(), 13, hidden=(16,)))
    tx = optax.adam(0.01)
    return ex, spec, graphdef, params, tx


def test_staleness_zero_equals_a_sequential_loop():
    ex, spec, graphdef, params, tx = _setup()
    train_fn, eval_fn = make_steps(graphdef, tx, spec)
    copy = lambda tree: jax.tree.map(jnp.copy, tree)  # noqa: E731

    store_a = LocalStore(spec.tables)
    res = run_pass(store_a, spec, batches(ex, spec, BATCH), train=True, train_fn=train_fn,
                   params=copy(params), opt_state=tx.init(params), staleness=0)  # fmt: skip

    store_b = LocalStore(spec.tables)
    p, s = copy(params), tx.init(params)
    for lo in range(0, len(ex), BATCH):
        hb = make_batch(ex.take(lo, min(len(ex), lo + BATCH)), spec, BATCH)
        u = hb.unique_ids["embedding"]
        rows = np.zeros((hb.padded_rows("embedding"), 4), np.float32)
        rows[: len(u)] = store_b.pull("embedding", u, train=True, shows=hb.shows["embedding"])
        db = hb.device_batch({"embedding": rows})
        p, s, g, _, _ = train_fn(p, s, db)
        store_b.push("embedding", u, np.asarray(g["embedding"])[: len(u)],
                     clicks=hb.clicks["embedding"], counts=hb.shows["embedding"])  # fmt: skip

    assert res.batches == -(-len(ex) // BATCH)
    jax.tree.map(np.testing.assert_array_equal, res.params, p)
    probe = np.concatenate([make_batch(ex.take(0, BATCH), spec, BATCH).unique_ids["embedding"]])
    np.testing.assert_array_equal(store_a.pull("embedding", probe, train=False),
                                  store_b.pull("embedding", probe, train=False))  # fmt: skip
    assert store_a.stats()["embedding"]["rows"] == store_b.stats()["embedding"]["rows"]


class OrderStore(LocalStore):
    """Records, at each training pull, how many pushes had been applied; a push takes 30 ms
    (a slow store), which a pipeline with staleness > 0 may overlap with later pulls."""

    def __init__(self, tables):
        super().__init__(tables)
        self.pushed, self.seen = 0, []

    def pull(self, table, ids, *, train, **kw):
        if train:
            self.seen.append(self.pushed)
        return super().pull(table, ids, train=train, **kw)

    def push(self, table, ids, grads, **kw):
        time.sleep(0.03)
        super().push(table, ids, grads, **kw)
        self.pushed += 1


@pytest.mark.parametrize("staleness", [0, 1, 2])
def test_a_pull_sees_every_push_older_than_its_staleness(staleness):
    """Staleness s: batch i is pulled after the pushes of batches 0 .. i-s-1 are applied
    (never staler), and with s > 0 the pipeline does pull ahead of a slow push."""
    ex, spec, graphdef, params, tx = _setup()
    train_fn, _ = make_steps(graphdef, tx, spec)
    store = OrderStore(spec.tables)
    run_pass(store, spec, batches(ex, spec, BATCH), train=True, train_fn=train_fn,
             params=params, opt_state=tx.init(params), staleness=staleness)  # fmt: skip
    n = -(-len(ex) // BATCH)
    assert len(store.seen) == n and store.pushed == n
    assert all(i - staleness <= done <= i for i, done in enumerate(store.seen)), store.seen
    if staleness == 0:
        assert store.seen == list(range(n))
    else:
        assert any(done < i for i, done in enumerate(store.seen)), store.seen


class BrokenStore(LocalStore):
    def __init__(self, tables, fail_pull_at=None, fail_push=False):
        super().__init__(tables)
        self.pulls = 0
        self.fail_pull_at = fail_pull_at
        self.fail_push = fail_push

    def pull(self, table, ids, *, train, **kw):
        self.pulls += 1
        if self.pulls == self.fail_pull_at:
            raise ConnectionError("shard 127.0.0.1:1234 is down")
        return super().pull(table, ids, train=train, **kw)

    def push(self, table, ids, grads, **kw):
        if self.fail_push:
            raise ConnectionError("push refused")
        super().push(table, ids, grads, **kw)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("staleness", [0, 1])
@pytest.mark.parametrize("failure", [{"fail_pull_at": 3}, {"fail_push": True}])
def test_store_failure_surfaces_as_an_error(staleness, failure):
    ex, spec, graphdef, params, tx = _setup()
    train_fn, _ = make_steps(graphdef, tx, spec)
    store = BrokenStore(spec.tables, **failure)
    with pytest.raises(PipelineError, match="shard 127.0.0.1:1234 is down|push refused"):
        run_pass(store, spec, batches(ex, spec, BATCH), train=True, train_fn=train_fn,
                 params=params, opt_state=tx.init(params), staleness=staleness)  # fmt: skip
