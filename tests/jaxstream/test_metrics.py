"""Bucketed metrics against sklearn's exact ones; merging is exact."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from jaxstream.metrics import NUM_BUCKETS, BinaryMetrics


def _data(seed, n=20_000, aligned=False):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.25).astype(np.float64)
    score = rng.normal(labels * 1.2, 1.0)
    preds = 1 / (1 + np.exp(-score))
    if aligned:  # one prediction per bucket centre: no information lost to bucketing
        preds = (np.floor(preds * NUM_BUCKETS) + 0.5) / NUM_BUCKETS
    return labels, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_is_exact_on_bucket_aligned_predictions(seed):
    labels, preds = _data(seed, aligned=True)
    m = BinaryMetrics()
    m.update(labels, preds)
    assert m.auc() == pytest.approx(roc_auc_score(labels, preds), abs=1e-12)


def test_auc_close_and_logloss_copc_exact_on_raw_predictions():
    labels, preds = _data(3)
    m = BinaryMetrics()
    m.update(labels, preds)
    assert abs(m.auc() - roc_auc_score(labels, preds)) < 2e-4
    assert m.logloss() == pytest.approx(log_loss(labels, preds), rel=1e-9)
    assert m.copc() == pytest.approx(labels.sum() / preds.sum())


def test_merge_of_shards_equals_the_whole():
    labels, preds = _data(4)
    whole = BinaryMetrics()
    whole.update(labels, preds)
    parts = [BinaryMetrics() for _ in range(3)]
    for i, p in enumerate(parts):
        p.update(labels[i::3], preds[i::3])
    merged = parts[0].merge(parts[1]).merge(parts[2])
    restored = BinaryMetrics.from_state(merged.state_dict())
    for m in (merged, restored):  # every field and every figure (copc and the means too)
        for name, value in dataclasses.asdict(whole).items():
            np.testing.assert_allclose(getattr(m, name), value, rtol=1e-12, err_msg=name)
        assert m.summary() == pytest.approx(whole.summary(), rel=1e-12)


def test_weights_ignore_padding_and_degenerate_auc_is_nan():
    m = BinaryMetrics()
    m.update(np.array([1.0, 0.0, 1.0]), np.array([0.9, 0.1, 0.0]), np.array([1.0, 1.0, 0.0]))
    assert m.auc() == 1.0 and m.count == 2
    one_class = BinaryMetrics()
    one_class.update(np.ones(3), np.full(3, 0.5))
    assert np.isnan(one_class.auc())
