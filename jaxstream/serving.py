"""Serving: predictions from the newest checkpoint, refreshed as new deltas land.

The Predictor reads only what serving needs from a training workdir: the dense parameters
(Orbax) and, from each store snapshot of the chain, the keys, weights and deleted keys (no
optimizer state, checksums verified). ``refresh()`` applies the deltas of newer checkpoints
in place, or reloads everything when a new base appeared, without a restart. It serves the
newest checkpoint whose files all verify, as the trainer restores: every file of a step is
read and checked before any of it is applied, so a damaged checkpoint is skipped (with a
warning, once; ``unusable`` says why) and the one served stays whole.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import jax
import numpy as np
from flax import nnx

import hoststore as hs
from hoststore import snapshot as snap
from jaxstream.batching import batches
from jaxstream.checkpoint import CheckpointError, CheckpointManager
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
        self.unusable: list[tuple[int, str]] = []  # (step, why) of the steps not served
        self._refused: set[tuple[int, int, int]] = set()
        meta = self._newest_readable()
        self.config = config_from_dict(meta["config"])
        self.batch_size = batch_size or self.config.batch_size
        self.spec = features if features is not None else feature_spec(self.config)
        if model is None:  # a custom tower is passed in, built the way it was trained
            model = model_of(self.config, self.spec)
        self._graphdef, self._params_template = nnx.split(model)
        self._eval = jax.jit(functools.partial(eval_step, self._graphdef, self.spec))
        self.step = None
        self._base_step = None
        self._applied: dict[str, int] = {}
        if not self.refresh():
            newest = "; the newest, {}: {}".format(*self.unusable[0]) if self.unusable else ""
            raise CheckpointError(f"no checkpoint under {self._ckpt.root} verifies{newest}")

    def _newest_readable(self) -> dict:
        """The newest meta.json that verifies (for the config; the files come later)."""
        for step in reversed(self._ckpt.steps()):
            meta = self._ckpt.read_meta(step)
            if meta is not None:
                return meta
        raise FileNotFoundError(f"no committed checkpoint under {self._ckpt.root}")

    def _serving_table(self, name: str) -> hs.EmbeddingTable:
        cfg = dataclasses.replace(self.spec.table(name), optimizer=hs.optimizers.sgd(0.0))
        return hs.EmbeddingTable(cfg)

    def refresh(self) -> bool:
        """Serves the newest checkpoint newer than the one served whose files all verify;
        True when the served one changed. A step that does not verify is skipped (a
        warning, once, until the trainer commits that step anew) and an older one newer
        than the served one is tried."""
        for step in reversed(self._ckpt.steps()):
            if self.step is not None and step <= self.step:
                break
            commit = None
            try:
                commit = self._ckpt.commit_mark(step)
                if commit in self._refused:
                    continue
                loaded = self._read(step)
            except (CheckpointError, snap.SnapshotError, OSError, ValueError) as e:
                why = " ".join(str(e).split())
                log.warning("checkpoint %d is not served (%s)", step, why)
                self.unusable.append((step, why))
                if commit is not None:  # (None: the step went while it was looked at)
                    self._refused.add(commit)
                continue
            self._apply(step, *loaded)
            return True
        return False

    def _read(self, step: int):
        """Everything step ``step`` changes, read and verified: (meta, whether the tables
        are rebuilt from a new base, each table's snapshots in order, dense params)."""
        meta = self._ckpt.verified(step)
        rebuild = meta["base_step"] != self._base_step
        reads = {}
        for name, chains in meta["store_chains"].items():
            start = 0 if rebuild else self._applied[name]
            # One chain per part of the store (shard servers), merged here.
            reads[name] = [snap.read_weights(os.path.join(self._ckpt.root, rel),
                                             with_counts=self.spec.counts)
                           for chain in chains for rel in chain[start:]]  # fmt: skip
        params = self._ckpt.read_dense(step, meta, self._params_template, params_only=True)
        return meta, rebuild, reads, params

    def _apply(self, step: int, meta: dict, rebuild: bool, reads: dict, params) -> None:
        if rebuild:
            self.tables = {n: self._serving_table(n) for n in meta["store_chains"]}
        for name, snapshots in reads.items():
            for args in snapshots:
                self.tables[name].apply_snapshot(*args)
            self._applied[name] = len(meta["store_chains"][name][0])
        self._params = params
        log.info("serving checkpoint %d (cursor %s)", step, meta["cursor"])
        self.step, self._base_step, self.cursor = step, meta["base_step"], meta["cursor"]

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
