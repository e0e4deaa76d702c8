"""The jitted train and eval steps: pure functions of (params, optimizer state, batch).

The store rows arrive as one [U, dim] array per table (the batch's unique IDs, padded);
the step gathers them by each slot's index, pools multi-hot slots, runs the model and
returns the gradient of every unique row, so the host can push it to the store. Nothing
here calls back into Python.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxstream.features import FeatureSpec


class DeviceBatch(NamedTuple):
    rows: dict[str, jax.Array]  # table -> [U_pad, count_columns + dim]
    index: dict[str, jax.Array]  # table -> [S, B, L_max] int32: its slots, in spec order
    mask: dict[str, jax.Array]  # table -> [S, B, L_max]
    dense: jax.Array  # [B, D]
    labels: jax.Array  # [B]
    weights: jax.Array  # [B]


class StepOutput(NamedTuple):
    """What one train step returns."""

    params: Any
    opt_state: Any
    row_grads: dict[str, jax.Array]  # table -> [U_pad, dim] gradient of the summed loss
    predictions: jax.Array  # [B] click probabilities (before this step's update)
    loss_sum: jax.Array  # summed weighted log loss of the batch


def count_features(counts: jax.Array) -> jax.Array:
    """Paddle's CVM transform of (show, click): log(show + 1), log(click + 1) - log(show + 1).
    Constants to the model (no gradient flows into the store's counters)."""
    counts = jax.lax.stop_gradient(counts)
    log_show = jnp.log1p(counts[:, 0])
    return jnp.stack([log_show, jnp.log1p(counts[:, 1]) - log_show], axis=-1)


def pooled_embeddings(spec: FeatureSpec, rows, index, mask) -> list[jax.Array]:
    c = spec.count_columns
    if c:
        rows = {t: jnp.concatenate([count_features(r[:, :c]), r[:, c:]], -1)
                for t, r in rows.items()}  # fmt: skip
    pooled = {}
    for t in spec.tables:
        for j, s in enumerate(spec.slots_of(t.name)):
            m = mask[t.name][j, :, : s.max_len]
            e = (rows[t.name][index[t.name][j, :, : s.max_len]] * m[..., None]).sum(axis=1)
            if s.pooling == "mean":
                e = e / jnp.maximum(m.sum(axis=1, keepdims=True), 1.0)
            pooled[s.name] = e
    return [pooled[s.name] for s in spec.slots]


def _logits(graphdef, spec, params, rows, batch: DeviceBatch):
    model = nnx.merge(graphdef, params)
    return model(pooled_embeddings(spec, rows, batch.index, batch.mask), batch.dense)


def _weighted_logloss(logits, labels, weights):
    return (optax.sigmoid_binary_cross_entropy(logits, labels) * weights).sum()


def train_step(graphdef, tx, spec, params, opt_state, batch: DeviceBatch):
    """One step; returns a :class:`StepOutput`.

    Dense parameters follow the mean loss; row gradients are those of the summed loss (the
    per-example gradients added up), the scale parameter-server optimizers expect.
    """
    g_params, row_grads, preds, loss, n = grad_step(graphdef, spec, params, batch)
    params, opt_state = apply_step(tx, params, opt_state, g_params, n)
    return StepOutput(params, opt_state, row_grads, preds, loss)


def _embedding_grads(spec: FeatureSpec, g_rows):
    """Drops the count columns: only the embedding part of a row is pushed back."""
    c = spec.count_columns
    return {t: g[:, c:] for t, g in g_rows.items()} if c else g_rows


def eval_step(graphdef, spec, params, batch: DeviceBatch):
    return jax.nn.sigmoid(_logits(graphdef, spec, params, batch.rows, batch))


def make_steps(graphdef, tx, spec: FeatureSpec) -> tuple[Any, Any]:
    """(jitted train step, jitted eval step) with the static pieces bound."""
    train = jax.jit(functools.partial(train_step, graphdef, tx, spec), donate_argnums=(0, 1))
    evaluate = jax.jit(functools.partial(eval_step, graphdef, spec))
    return train, evaluate


def grad_step(graphdef, spec, params, batch: DeviceBatch):
    """Gradients of the summed loss (dense and per row), predictions, loss sum, examples."""

    def loss_fn(params, rows):
        logits = _logits(graphdef, spec, params, rows, batch)
        return _weighted_logloss(logits, batch.labels, batch.weights), logits

    (loss, logits), (g_params, g_rows) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
        params, batch.rows
    )
    g_rows = _embedding_grads(spec, g_rows)
    return g_params, g_rows, jax.nn.sigmoid(logits), loss, batch.weights.sum()


def apply_step(tx, params, opt_state, g_params, n):
    """The dense update with the gradients of the summed loss over ``n`` examples, averaged."""
    mean_g = jax.tree.map(lambda g: g / jnp.maximum(n, 1.0), g_params)
    updates, opt_state = tx.update(mean_g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def make_distributed_train_step(graphdef, tx, spec: FeatureSpec, workers, mesh: Mesh | None):
    """A train step for several workers: local gradients (data parallel over ``mesh``, this
    worker's devices, when it has several), summed over workers by a JAX collective on the
    devices (no host round trip), divided by the examples of all workers, then the same
    optimizer update everywhere. Same return values as :func:`train_step`."""
    # Replicated on this worker's devices: each holds the whole sum that it contributes.
    placed = {} if mesh is None else {"out_shardings": NamedSharding(mesh, P())}
    grad = jax.jit(functools.partial(grad_step, graphdef, spec), **placed)
    apply = jax.jit(lambda params, opt_state, total: apply_step(tx, params, opt_state,
                                                                total["g"], total["n"]),
                    donate_argnums=(0, 1))  # fmt: skip

    def step(params, opt_state, batch: DeviceBatch):
        g, row_grads, preds, loss, n = grad(params, batch)
        params, opt_state = apply(params, opt_state, workers.device_sum({"g": g, "n": n}))
        return StepOutput(params, opt_state, row_grads, preds, loss)

    return step


def local_mesh(count: int, batch_size: int) -> Mesh | None:
    """A data-parallel mesh over this process's devices: ``count`` of them (0: all), or
    fewer so that they divide ``batch_size``; None for one device."""
    devices = jax.local_devices()
    n = min(count or len(devices), len(devices))
    while batch_size % n:
        n -= 1
    return Mesh(np.array(devices[:n]), ("data",)) if n > 1 else None


def batch_placement(mesh: Mesh, spec: FeatureSpec) -> DeviceBatch:
    """Where a DeviceBatch's parts go on ``mesh``: the examples split over the devices, the
    batch's unique rows on every device. Inside the jitted step XLA then sums the dense and
    the row gradients across devices (its collectives; no host round trip)."""
    split = NamedSharding(mesh, P("data"))
    slots_split = NamedSharding(mesh, P(None, "data"))  # [S, B, L]: split along B
    every = NamedSharding(mesh, P())
    tables = [t.name for t in spec.tables]
    return DeviceBatch(dict.fromkeys(tables, every), dict.fromkeys(tables, slots_split),
                       dict.fromkeys(tables, slots_split), split, split, split)  # fmt: skip


# Donated: its arguments are JAX's own copies of the numpy arrays, which the result reuses.
_copied = jax.jit(lambda tree: tree, donate_argnums=0)


def to_device(tree, placement=None):
    """``tree`` of numpy arrays (a DeviceBatch) copied to the device: ``placement`` (a
    device or a tree of shardings, see :func:`batch_placement`) or, when None, the default
    device. Without a placement the copy goes through a jitted identity: JAX's C++ dispatch
    copies its arguments in ~0.03 ms of one thread per array, where ``jax.device_put``
    spends ~0.15 ms of Python (holding the GIL, which the pipeline's other stages wait for)
    and leaves 64-byte-aligned numpy memory aliased, not copied. With a placement,
    ``jax.device_put`` (a jitted identity with the shardings was no faster)."""
    if placement is not None:
        return jax.device_put(tree, placement)
    if any(isinstance(x, jax.Array) for x in jax.tree.leaves(tree)):
        raise TypeError("to_device copies numpy arrays; this tree holds device arrays")
    return _copied(tree)


def replicate(mesh: Mesh | None, tree):
    """``tree`` (parameters, optimizer state) on every device of ``mesh``."""
    return tree if mesh is None else jax.device_put(tree, NamedSharding(mesh, P()))
