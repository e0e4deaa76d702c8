"""The plain-JAX baseline the benchmark compares against: a fixed-size hashed embedding
table held in the model's parameters (2^20 rows by default), the same tower, dense Adam
over everything, and the same progressive protocol (evaluate each hour, then train)."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxstream.batching import HostBatch, batches
from jaxstream.config import TrainConfig
from jaxstream.features import FeatureSpec
from jaxstream.metrics import BinaryMetrics
from jaxstream.stream import PartitionSource, SourceConfig


class HashedModel(nnx.Module):
    def __init__(self, spec: FeatureSpec, tower: nnx.Module, rows: int, scale: float, seed: int):
        dim = spec.tables[0].dim
        key = jax.random.key(seed)
        self.table = nnx.Param(jax.random.uniform(key, (rows, dim), minval=-scale, maxval=scale))
        self.tower = tower
        self.spec = spec

    def __call__(self, index, mask, dense):
        pooled = []
        for s in self.spec.slots:
            e = (self.table[...][index[s.name]] * mask[s.name][..., None]).sum(1)
            if s.pooling == "mean":
                e = e / jnp.maximum(mask[s.name].sum(1, keepdims=True), 1.0)
            pooled.append(e)
        return self.tower(pooled, dense)


def _hashed_index(hb: HostBatch, spec: FeatureSpec, rows: int) -> dict[str, np.ndarray]:
    out = {}
    for s in spec.slots:
        slot_rows = (hb.unique_ids[s.table].view(np.uint64) % np.uint64(rows)).astype(np.int32)
        out[s.name] = slot_rows[hb.index[s.name]]
    return out


def _loss(graphdef, params, index, mask, dense, labels, weights):
    logits = nnx.merge(graphdef, params)(index, mask, dense)
    n = jnp.maximum(weights.sum(), 1.0)
    return (optax.sigmoid_binary_cross_entropy(logits, labels) * weights).sum() / n, logits


def _train(graphdef, tx, params, opt_state, index, mask, dense, labels, weights):
    (_, logits), g = jax.value_and_grad(functools.partial(_loss, graphdef), has_aux=True)(
        params, index, mask, dense, labels, weights
    )
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, jax.nn.sigmoid(logits)


def _eval(graphdef, params, index, mask, dense):
    return jax.nn.sigmoid(nnx.merge(graphdef, params)(index, mask, dense))


def run_hashed_baseline(
    cfg: TrainConfig, data_root: str, spec: FeatureSpec, rows: int = 1 << 20
) -> list[dict]:
    """Per-partition progressive and train metrics of the hashed baseline."""
    from jaxstream.train import model_of, read_partition

    tower = model_of(cfg, spec)
    model = HashedModel(spec, tower, rows, cfg.initializer_scale, cfg.seed)
    graphdef, params = nnx.split(model)
    tx = getattr(optax, cfg.dense_optimizer)(cfg.dense_learning_rate)
    opt_state = tx.init(params)
    train = jax.jit(functools.partial(_train, graphdef, tx), donate_argnums=(0, 1))
    evaluate = jax.jit(functools.partial(_eval, graphdef))
    out = []
    source = PartitionSource(
        SourceConfig(data_root, cfg.pattern, max_partitions=cfg.max_partitions)
    )
    for part in source:
        examples, _ = read_partition(cfg, part)
        ev, tr = BinaryMetrics(), BinaryMetrics()
        for hb in batches(examples, spec, cfg.batch_size):
            p = evaluate(params, _hashed_index(hb, spec, rows), hb.mask, hb.dense)
            ev.update(hb.labels[: hb.size], np.asarray(p)[: hb.size])
        t0 = time.perf_counter()
        preds = []  # converted after the pass, so dispatch stays asynchronous
        for hb in batches(examples, spec, cfg.batch_size):
            params, opt_state, p = train(params, opt_state, _hashed_index(hb, spec, rows),
                                         hb.mask, hb.dense, hb.labels, hb.weights)  # fmt: skip
            preds.append((hb, p))
        for hb, p in preds:
            tr.update(hb.labels[: hb.size], np.asarray(p)[: hb.size])
        seconds = time.perf_counter() - t0
        out.append({"partition": part.key, "progressive_auc": ev.auc(), "train_auc": tr.auc(),
                    "logloss": ev.logloss(),
                    "train_examples_per_sec": len(examples) / seconds})  # fmt: skip
    return out
