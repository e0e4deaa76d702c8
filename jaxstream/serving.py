"""Serving: predictions from the newest checkpoint, refreshed as new deltas land.

The Predictor reads only what serving needs from a training workdir: the dense parameters
(Orbax) and, from each store snapshot of the chain, the keys, weights and deleted keys (no
optimizer state, checksums verified). ``refresh()`` applies the deltas of newer checkpoints
in place, or reloads everything when a new base appeared, without a restart.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

import hoststore as hs
from hoststore import snapshot as snap
from jaxstream.batching import batches
from jaxstream.checkpoint import CheckpointManager
from jaxstream.config import TrainConfig
from jaxstream.data.examples import Examples, ReadReport
from jaxstream.data.synthetic import StreamConfig
from jaxstream.features import FeatureSpec
from jaxstream.metrics import BinaryMetrics
from jaxstream.pipeline import pull_batch_rows
from jaxstream.step import eval_step, to_device

log = logging.getLogger(__name__)


def config_from_dict(d: dict) -> TrainConfig:
    d = dict(d)
    d["synthetic"] = StreamConfig(**d["synthetic"])
    for k in ("hidden", "slot_names"):
        d[k] = tuple(d[k])
    return TrainConfig(**d)


class Predictor:
    """Scores examples with the model of the newest checkpoint under ``workdir``."""

    def __init__(
        self,
        workdir: str,
        batch_size: int | None = None,
        model: nnx.Module | None = None,
        features: FeatureSpec | None = None,
    ):
        """``model`` and ``features``: the ones the run was trained with, when they were not
        the config's defaults."""
        from jaxstream.train import feature_spec, model_of  # the trainer's, not copies

        self._ckpt = CheckpointManager(workdir)
        steps = self._ckpt.steps()
        if not steps:
            raise FileNotFoundError(f"no committed checkpoint under {self._ckpt.root}")
        meta = self._ckpt.read_meta(steps[-1])
        self.config = config_from_dict(meta["config"])
        self.batch_size = batch_size or self.config.batch_size
        self.spec = features if features is not None else feature_spec(self.config)
        if model is None:  # a custom tower is passed in, built the way it was trained
            model = model_of(self.config, self.spec)
        self._graphdef, self._params_template = nnx.split(model)
        self._eval = jax.jit(functools.partial(eval_step, self._graphdef, self.spec))
        self._orbax = ocp.StandardCheckpointer()
        self.step = None
        self._base_step = None
        self._applied: dict[str, int] = {}
        self.refresh()

    def _serving_table(self, name: str) -> hs.EmbeddingTable:
        cfg = dataclasses.replace(self.spec.table(name), optimizer=hs.optimizers.sgd(0.0))
        return hs.EmbeddingTable(cfg)

    def refresh(self) -> bool:
        """Loads checkpoints newer than the one served; True when something changed."""
        steps = self._ckpt.steps()
        if not steps or steps[-1] == self.step:
            return False
        step = steps[-1]
        meta = self._ckpt.read_meta(step)
        if meta["base_step"] != self._base_step:
            self.tables = {n: self._serving_table(n) for n in meta["store_chains"]}
            self._applied = {n: 0 for n in meta["store_chains"]}
        for name, chains in meta["store_chains"].items():
            for chain in chains:  # one per part of the store (shard servers), merged here
                for rel in chain[self._applied[name] :]:
                    snap.apply_weights(self.tables[name], os.path.join(self._ckpt.root, rel),
                                       with_counts=self.spec.counts)  # fmt: skip
            self._applied[name] = len(chains[0])
        self._params = self._load_params(step, meta)
        log.info("serving checkpoint %d (cursor %s)", step, meta["cursor"])
        self.step, self._base_step, self.cursor = step, meta["base_step"], meta["cursor"]
        return True

    def _load_params(self, step: int, meta: dict):
        dense = os.path.join(self._ckpt.root, f"{step:06d}", "dense")
        leaves, treedef = jax.tree_util.tree_flatten(self._params_template)
        saved = self._orbax.restore(dense)
        return jax.tree_util.tree_unflatten(
            treedef, [jax.numpy.asarray(saved[str(i)], x.dtype) for i, x in enumerate(leaves)]
        )

    def read(self, path: str) -> tuple[Examples, ReadReport]:
        """(examples, read report) of a partition folder or one file, in the format the
        run trained on; a ValueError names ``path`` when it holds no example to score."""
        from jaxstream.train import read_path

        examples, report = read_path(self.config, path)
        if len(examples) == 0:
            raise ValueError(f"{path}: no example to score ({report.malformed} of "
                             f"{report.lines} lines malformed; the model was trained on "
                             f"format={self.config.format})")  # fmt: skip
        return examples, report

    def predict(self, examples: Examples) -> np.ndarray:
        """Click probabilities of ``examples``, in order."""
        out = []
        for hb in batches(examples, self.spec, self.batch_size):
            rows = pull_batch_rows(hs.LocalStore.from_tables(self.tables), self.spec, hb, False)
            db = hb.device_batch(rows)
            out.append(np.asarray(self._eval(self._params, to_device(db)))[: hb.size])
        return np.concatenate(out) if out else np.empty(0, np.float32)

    def evaluate(self, examples: Examples) -> BinaryMetrics:
        return self.evaluate_scores(examples.labels, self.predict(examples))

    @staticmethod
    def evaluate_scores(labels: np.ndarray, scores: np.ndarray) -> BinaryMetrics:
        m = BinaryMetrics()
        m.update(labels, scores)
        return m
