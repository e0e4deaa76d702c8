"""Pass mode: batches trained as one pass whose rows live on the device.

Paddle's GPU parameter server (BuildPass / EndPass) and HugeCTR's embedding training cache
work this way; here:

1. begin: each table's store applies the pass's statistics in batch order and lends its
   rows (:meth:`hoststore.Store.begin_pass`): shows, clicks, admission and new rows come
   out exactly as in a synchronous per-batch loop;
2. train: the rows (weights and optimizer state) sit on the device; each batch's unique IDs
   are slots into them, and the jitted step reads its rows, trains the dense model and
   applies the sparse optimizer (:mod:`jaxstream.sparse_update`) to the rows it touched:
   no pull, push or row transfer per batch;
3. end: the rows go back to the store (:meth:`hoststore.Store.end_pass`).

The result is that of staleness-0 per-batch training, to float tolerance (the store's
optimizer keeps a few intermediates in float64). A pass holds its host batches and its
rows on the device: ``pass_batches`` bounds both. Over several local devices the batch is
split and the pass's rows sit on every device; XLA sums their row gradients inside the
step, so every copy takes the same update.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from hoststore import Store
from jaxstream.batching import HostBatch, bucket
from jaxstream.features import FeatureSpec
from jaxstream.metrics import BinaryMetrics
from jaxstream.pipeline import PassResult
from jaxstream.sparse_update import rule_of
from jaxstream.step import DeviceBatch, StepOutput, batch_placement, to_device, train_step


class PassTables(NamedTuple):
    """A pass's rows on the device, per table: weights and optimizer state of its K rows,
    padded to a bucket of at least K + 1 rows (row K is a scratch row that padding slots
    and IDs without a row point at)."""

    weights: dict[str, jax.Array]
    state: dict[str, tuple]


class PassBatch(NamedTuple):
    """Per table, for each of a batch's (padded) unique IDs: its slot in the pass's rows
    (K for padding and IDs without a row), whether it had a row at its pull, the
    occurrences its gradient sums, and (with counts) the (show, click) it read."""

    slot: dict[str, np.ndarray]
    found: dict[str, np.ndarray]
    occurrences: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]


def pass_step(graphdef, tx, spec: FeatureSpec, store_configs, params, opt_state,
              tables: PassTables, batch: DeviceBatch, pb: PassBatch, hparams):  # fmt: skip
    """One training step of a pass: rows read from ``tables``, the dense update as in
    :func:`jaxstream.step.train_step`, then each table's sparse optimizer on the rows the
    batch found. Returns (StepOutput without row gradients, new tables)."""
    rows = {}
    for t in spec.tables:
        cfg = store_configs[t.name]
        w = tables.weights[t.name][pb.slot[t.name]]
        emb = jnp.where(pb.found[t.name][:, None], w, cfg.admission.default_value)
        rows[t.name] = jnp.concatenate([pb.counts[t.name], emb], -1) if spec.counts else emb
    out = train_step(graphdef, tx, spec, params, opt_state, batch._replace(rows=rows))
    weights, state = dict(tables.weights), dict(tables.state)
    for t in spec.tables:
        cfg = store_configs[t.name]
        slot, found = pb.slot[t.name], pb.found[t.name]
        old_w = weights[t.name][slot]
        old_s = tuple(s[slot] for s in state[t.name])
        new_w, new_s = rule_of(cfg.optimizer.name)(
            old_w, old_s, out.row_grads[t.name], pb.occurrences[t.name], hparams[t.name],
            *cfg.weight_bounds)  # fmt: skip

        def keep(new, old, found=found):  # rows the batch did not find stay as they were
            return jnp.where(found.reshape(found.shape + (1,) * (new.ndim - 1)), new, old)

        weights[t.name] = weights[t.name].at[slot].set(keep(new_w, old_w))
        columns = zip(state[t.name], new_s, old_s, strict=True)
        state[t.name] = tuple(s.at[slot].set(keep(n, o)) for s, n, o in columns)
    step_out = StepOutput(out.params, out.opt_state, {}, out.predictions, out.loss_sum)
    return step_out, PassTables(weights, state)


def make_pass_step(graphdef, tx, spec: FeatureSpec, store_configs) -> Callable:
    """The jitted :func:`pass_step` (parameters, optimizer state and rows donated)."""
    return jax.jit(functools.partial(pass_step, graphdef, tx, spec, store_configs),
                   donate_argnums=(0, 1, 2))  # fmt: skip


@functools.partial(jax.jit, donate_argnums=(0, 1))
def _carry_rows(weights, state, src_weights, src_state, src, dst):
    """Rows ``src`` of the source pass copied to rows ``dst`` of the destination."""
    weights = weights.at[dst].set(src_weights[src])
    state = tuple(d.at[dst].set(s[src]) for d, s in zip(state, src_state, strict=True))
    return weights, state


def _pad(x: np.ndarray, n: int, fill=0) -> np.ndarray:
    out = np.full((n, *x.shape[1:]), fill, x.dtype)
    out[: len(x)] = x
    return out


class PassTrainer:
    """Trains batches in passes of up to ``pass_batches`` batches (see the module
    docstring), one :meth:`train` per partition. Row buckets only grow from pass to pass,
    so the jitted step compiles once per new size, not once per pass."""

    def __init__(self, store: Store, spec: FeatureSpec, step: Callable, pass_batches: int,
                 mesh: Mesh | None = None):  # fmt: skip
        """``mesh``: local devices to train on, data parallel (each batch split over them,
        the pass's rows on every one, their updates identical everywhere); None: the
        default device."""
        self.store, self.spec, self.step = store, spec, step
        self.pass_batches = pass_batches
        self._every = None if mesh is None else NamedSharding(mesh, P())
        self._split = None if mesh is None else batch_placement(mesh, spec)._replace(rows={})
        self._configs = store.tables()
        self._rows = dict.fromkeys(self._configs, 0)  # per table: rows lent to the device
        self._slots = dict.fromkeys(self._configs, 0)  # and a batch's padded unique IDs

    def train(self, batches: Iterable[HostBatch], params, opt_state,
              progress: Callable[[int, int], None] | None = None) -> PassResult:  # fmt: skip
        """Returns the same record as a per-batch pass (batch seconds: building batches;
        host seconds: beginning passes; push seconds: ending them).

        The next pass is built and begun in a thread while this one trains: its statistics
        do not depend on the weights, and the rows it shares with this pass are carried
        over on the device when this one ends (they were lent before this pass wrote them
        back); what it shares with earlier passes was written back before it began."""
        metrics = BinaryMetrics()
        self._timers = {"build": 0.0, "begin": 0.0, "end": 0.0}
        n_batches = 0
        t_start = time.perf_counter()
        made = iter(batches)
        with ThreadPoolExecutor(1, thread_name_prefix="pass-begin") as ahead:
            current = self._prepare(made)
            previous = None  # the pass just trained: (its keys, its rows on the device)
            while current is not None:
                group, tables, pbs, keys, hparams = current
                if previous is not None:
                    tables = self._carry(previous, keys, tables)
                    self._end(*previous)
                upcoming = ahead.submit(self._prepare, made)
                preds = []
                for hb, pb in zip(group, pbs, strict=True):
                    batch = to_device(hb.device_batch({}), self._split)
                    out, tables = self.step(params, opt_state, tables, batch,
                                            to_device(pb, self._every), hparams)  # fmt: skip
                    params, opt_state = out.params, out.opt_state
                    preds.append(out.predictions)
                    n_batches += 1
                    if progress:
                        progress(n_batches, hb.size)
                for hb, p in zip(group, preds, strict=True):
                    metrics.update(hb.labels[: hb.size], np.asarray(p)[: hb.size])
                previous = (keys, tables)
                current = upcoming.result()
            if previous is not None:
                self._end(*previous)
        t = self._timers
        return PassResult(params, opt_state, metrics, n_batches, time.perf_counter() - t_start,
                          t["begin"], t["end"], t["build"], [])  # fmt: skip

    def _prepare(self, made):
        """The next pass's batches, begun in the store; None when there are no more."""
        t0 = time.perf_counter()
        group = [hb for _, hb in zip(range(self.pass_batches), made)]
        self._timers["build"] += time.perf_counter() - t0
        if not group:
            return None
        t0 = time.perf_counter()
        out = self._begin(group)
        self._timers["begin"] += time.perf_counter() - t0
        return (group, *out)

    def _carry(self, previous, keys, tables: PassTables) -> PassTables:
        """``tables`` with the rows it shares with the previous pass taken from that pass's
        final rows on the device."""
        old_keys, old = previous
        weights, state = dict(tables.weights), dict(tables.state)
        for t, k in keys.items():
            _, src, dst = np.intersect1d(old_keys[t], k, assume_unique=True,
                                         return_indices=True)  # fmt: skip
            if not len(src):
                continue
            n = bucket(len(src))  # a few shapes; padding copies scratch row to scratch row
            src = _pad(src.astype(np.int32), n, len(old_keys[t]))
            dst = _pad(dst.astype(np.int32), n, len(k))
            weights[t], state[t] = _carry_rows(weights[t], state[t], old.weights[t],
                                               old.state[t], src, dst)  # fmt: skip
        return PassTables(weights, state)

    def _end(self, keys, tables: PassTables) -> None:
        t0 = time.perf_counter()
        for t, k in keys.items():
            state = tuple(np.asarray(s)[: len(k)] for s in tables.state[t])
            self.store.end_pass(t, k, np.asarray(tables.weights[t])[: len(k)], state)
        self._timers["end"] += time.perf_counter() - t0

    def _begin(self, group: list[HostBatch]):
        """Each table's pass begun in the store: the rows on the device, every batch's
        :class:`PassBatch`, each table's keys (what ``end_pass`` writes back) and its
        optimizer's hyperparameters at the table's clock."""
        weights, state, keys, hparams = {}, {}, {}, {}
        per_batch = [PassBatch({}, {}, {}, {}) for _ in group]
        for t in self.spec.tables:
            name = t.name
            p = self.store.begin_pass(
                name, [(hb.unique_ids[name], hb.shows[name], hb.clicks[name]) for hb in group],
                with_counts=self.spec.counts)  # fmt: skip
            k = p.keys[p.present]
            scratch = len(k)
            if bucket(scratch + 1) > self._rows[name]:  # grows with room: fewer compiles
                self._rows[name] = bucket(2 * (scratch + 1))
            rows = self._rows[name]
            weights[name] = to_device(_pad(p.weights, rows), self._every)
            state[name] = tuple(to_device(_pad(s, rows), self._every) for s in p.state)
            keys[name] = k
            opt = self._configs[name].optimizer
            hparams[name] = to_device(np.float32(opt.hparams(p.clock)), self._every)
            n = max(self._slots[name], *(hb.padded_rows(name) for hb in group))
            self._slots[name] = n
            batches = zip(group, per_batch, p.found, p.counts, p.slots, strict=True)
            for hb, pb, found, counts, lent in batches:
                slot = np.full(n, scratch, np.int32)
                slot[: len(lent)] = np.where(lent >= 0, lent, scratch)
                pb.slot[name] = slot
                pb.found[name] = _pad(found, n, False)
                pb.occurrences[name] = _pad(hb.shows[name], n)
                pb.counts[name] = (_pad(counts, n) if self.spec.counts
                                   else np.zeros((n, 0), np.float32))  # fmt: skip
        return PassTables(weights, state), per_batch, keys, hparams
