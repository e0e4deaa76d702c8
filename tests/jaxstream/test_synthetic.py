"""The generator's bookkeeping and ceilings, against direct computations."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from experiments.benchmarks.learners import learner_references
from jaxstream.data.synthetic import (
    BAYES_GRID,
    StreamConfig,
    SyntheticStream,
    _bayes_pass,
    _prior_counts,
)


@pytest.mark.parametrize(
    "ids, present, seen",
    [
        ([3, 1, 3, 3, 0, 1], [1, 1, 0, 1, 1, 1], [2, 0, 5, 1]),
        ([2, 2, 2], [1, 1, 1], [0, 0, 7]),
        ([0], [0], [4]),
    ],
)
def test_prior_counts_match_a_loop(ids, present, seen):
    ids, present, seen = np.array(ids), np.array(present, bool), np.array(seen)
    expected, running = [], seen.copy()
    for i, p in zip(ids, present, strict=True):
        expected.append(running[i])
        running[i] += p
    np.testing.assert_array_equal(_prior_counts(ids, present, seen), expected)
    np.testing.assert_array_equal(seen, running)


def _exact_posterior_mean(offsets, labels, std):
    """Posterior mean of w ~ N(0, std^2) from labels ~ Bernoulli(sigmoid(offset + w)), by
    quadrature on a fine grid."""
    grid = np.linspace(-8 * std, 8 * std, 4001)
    z = np.asarray(offsets)[:, None] + grid[None, :]
    loglik = np.where(np.asarray(labels)[:, None], -np.logaddexp(0, -z), -np.logaddexp(0, z))
    logpost = loglik.sum(0) - grid**2 / (2 * std**2)
    post = np.exp(logpost - logpost.max())
    return (post * grid).sum() / post.sum()


@pytest.mark.parametrize("std", [0.2, 0.5, 0.8])
def test_bayes_learner_matches_exact_posterior(std):
    # Two slots; each row's label is a logistic observation of both IDs' weights. The
    # learner must give, per row, the exact posterior means from the rows before it.
    rng = np.random.default_rng(int(std * 10))
    n, ids = 400, 5
    gids = np.stack([rng.integers(0, ids, n), ids + rng.integers(0, ids, n)], axis=1)
    present = rng.random((n, 2)) < 0.9
    true_w = rng.normal(0, std, 2 * ids)
    offsets = rng.normal(-1.4, 1.0, n)
    logit = offsets + (true_w[gids] * present).sum(1)
    labels = rng.random(n) < 1 / (1 + np.exp(-logit))
    unit = np.linspace(-4.5, 4.5, BAYES_GRID)
    grid = np.stack([unit * std] * 2).astype(np.float32)
    logprior = np.stack([-(unit**2) / 2] * 2).astype(np.float32)
    row_of = np.full(2 * ids, -1, np.int32)
    loglik = np.zeros((2 * ids, BAYES_GRID), np.float32)
    got, used = _bayes_pass(gids, present, offsets, labels, true_w, row_of, loglik, 0, grid,
                            logprior, False)  # fmt: skip
    assert used == len(np.unique(gids[present]))
    expected = np.zeros(n)
    for r in range(n):
        for s in range(2):
            if not present[r, s]:
                continue
            before = np.flatnonzero((gids[:r, s] == gids[r, s]) & present[:r, s])
            own = true_w[gids[before, s]]
            rest = logit[before] - own
            expected[r] += _exact_posterior_mean(rest, labels[before], std)
    np.testing.assert_allclose(got, expected, atol=0.002 * std)


def test_plug_in_learner_of_one_slot_is_the_exact_learner():
    # With one ID per row there are no other IDs to plug in: the learner told the true
    # ID-free logit is the generous one.
    rng = np.random.default_rng(5)
    n, ids, std = 300, 4, 0.5
    gids = rng.integers(0, ids, (n, 1))
    present = np.ones((n, 1), bool)
    true_w = rng.normal(0, std, ids)
    offsets = rng.normal(-1.4, 1.0, n)
    labels = rng.random(n) < 1 / (1 + np.exp(-(offsets + true_w[gids[:, 0]])))
    unit = np.linspace(-4.5, 4.5, BAYES_GRID)
    grid, logprior = (unit * std)[None].astype(np.float32), (-(unit**2) / 2)[None]
    outs = []
    for plug_in in (False, True):
        state = np.full(ids, -1, np.int32), np.zeros((ids, BAYES_GRID), np.float32)
        outs.append(_bayes_pass(gids, present, offsets, labels, true_w, *state, 0, grid,
                                logprior.astype(np.float32), plug_in)[0])  # fmt: skip
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-6)
    assert np.abs(outs[0]).max() > 0.1  # it learned something


def test_learner_references_are_ordered():
    refs = learner_references(StreamConfig(hours=4, rows_per_hour=3000, max_vocab=3000), 2)
    assert refs["oracle"] > refs["bayes_ceiling"] > refs["plug_in_learner_told_dense"] > 0.55
    # Being told the pairwise terms can only help.
    assert refs["plug_in_learner_told_dense_and_pairs"] > refs["plug_in_learner_told_dense"]


def test_ceilings_are_ordered():
    stream = SyntheticStream(StreamConfig(hours=4, rows_per_hour=4000, max_vocab=5000))
    for h in range(4):
        part = stream.hour(h)
    aucs = {k: roc_auc_score(part["labels"], part[k]) for k in ("p_true", "p_seen", "p_bayes")}
    assert aucs["p_bayes"] < aucs["p_true"]
    assert aucs["p_seen"] < aucs["p_true"]
    # A learner of the ID weights beats one that knows only the dense and pairwise terms.
    assert aucs["p_bayes"] > 0.6
