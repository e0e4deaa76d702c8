"""Property test: random histories against the dict-based model of the table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hoststore as hs
from hoststore import optimizers as opt
from tests.hoststore.dict_table import DictTable

I64 = np.iinfo(np.int64)
UNIVERSE = np.array([0, -1, 1, I64.min, I64.max, 7, 42, -99, 2**40 + 3, 123456789], np.int64)
DIM = 3

CONFIGS = {
    "always_adagrad_unseen": hs.TableConfig(
        "t", DIM, optimizer=opt.adagrad(0.1),
        eviction=hs.Eviction(unseen_ticks=2, shrink_decay=0.5, min_score=0.2), seed=3
    ),
    "count_filter_sgd_maxrows": hs.TableConfig(
        "t", DIM, optimizer=opt.sgd(0.5),
        admission=hs.count_filter(3, max_pending=4, pending_ttl=2),
        eviction=hs.Eviction(max_rows=4), initializer=hs.normal(0.1),
    ),
    "show_click_adam_decay_score": hs.TableConfig(
        "t", DIM, optimizer=opt.adam(0.05),
        admission=hs.show_click(1.0, nonclk_coeff=0.5, click_coeff=2.0, default_value=0.25),
        eviction=hs.Eviction(decay=0.8, min_score=0.3, nonclk_coeff=0.5, click_coeff=2.0),
    ),
    "probability_ftrl_bounds": hs.TableConfig(
        "t", DIM, optimizer=opt.ftrl(0.1, l1=0.01), admission=hs.probability(0.4),
        weight_bounds=(-0.05, 0.05), seed=11,
    ),
    "paddle_rowwise_decay_unseen": hs.TableConfig(
        "t", DIM, optimizer=opt.rowwise_adagrad(0.2, paddle_style=True),
        eviction=hs.Eviction(decay=0.9, unseen_ticks=3, max_rows=6),
    ),
}  # fmt: skip

ids_st = st.lists(st.sampled_from(list(UNIVERSE)), min_size=0, max_size=12).map(
    lambda xs: np.array(xs, np.int64)
)
op_st = st.one_of(
    st.tuples(st.just("pull"), ids_st, st.booleans(), st.integers(0, 2**31 - 1)),
    st.tuples(st.just("push"), ids_st, st.integers(0, 2**31 - 1)),
    st.tuples(st.just("shrink")),
    st.tuples(st.just("advance"), st.integers(0, 3)),
)


def assert_same_table(table: hs.EmbeddingTable, model: DictTable) -> None:
    got = table.row_stats(UNIVERSE)
    pend = table.pending_stats(UNIVERSE)
    for i, k in enumerate(UNIVERSE.tolist()):
        assert got["present"][i] == (k in model.rows), f"presence of key {k}"
        assert pend["pending"][i] == (k in model.pending), f"pending state of key {k}"
        if k in model.rows:
            row = model.rows[k]
            assert got["last_seen"][i] == row.last_seen
            assert got["created"][i] == row.created
            np.testing.assert_allclose(got["delta_score"][i], row.delta_score, rtol=1e-5,
                                       atol=1e-6)  # fmt: skip
            f = table.config.eviction.decay ** float(model.clock - row.last_seen)
            np.testing.assert_allclose(got["show"][i], np.float32(float(row.show) * f), rtol=1e-6)
            np.testing.assert_allclose(got["click"][i], np.float32(float(row.click) * f), rtol=1e-6)
        if k in model.pending:
            assert pend["show"][i] == model.pending[k].show
            assert pend["click"][i] == model.pending[k].click
    weights = table.pull(UNIVERSE, train=False)
    expect = model.pull(UNIVERSE, train=False)
    np.testing.assert_allclose(weights, expect, rtol=1e-5, atol=1e-7)
    assert len(table) == len(model.rows)
    assert table.pending_count() == len(model.pending)
    assert sorted(table.evicted_keys().tolist()) == sorted(set(model.evicted))
    assert table.stats()["rejected"] == model.rejected
    assert table.stats()["displaced_pending"] == model.displaced


# A sharded table equals the model where its semantics are global: max_rows is split over
# shards and probability draws count pulls per shard, so those configs run unsharded only.
CASES = [(name, 1) for name in sorted(CONFIGS)] + [
    ("always_adagrad_unseen", 3),
    ("show_click_adam_decay_score", 2),
]


@pytest.mark.parametrize("name, shards", CASES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=25))
def test_random_history_matches_dict_model(name, shards, ops):
    cfg = CONFIGS[name]
    table = hs.EmbeddingTable(cfg) if shards == 1 else hs.ShardedTable(cfg, shards)
    model = DictTable(cfg)
    for op in ops:
        if op[0] == "pull":
            # Half the pulls stand for several occurrences per id (a trainer's deduped batch).
            rng = np.random.default_rng(op[3])
            shows = rng.integers(1, 4, len(op[1])).astype(np.float32) if op[3] % 2 else None
            got = table.pull(op[1], train=op[2], shows=shows)
            expect = model.pull(op[1], train=op[2], shows=shows)
            np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)
        elif op[0] == "push":
            rng = np.random.default_rng(op[2])
            # A third of the pushes are a trainer's: distinct ids, the table's fast path.
            unique = op[2] % 3 == 0
            ids = np.unique(op[1]) if unique else op[1]
            grads = rng.normal(size=(len(ids), DIM)).astype(np.float32)
            clicks = rng.integers(0, 2, len(ids)).astype(np.float32)
            counts = rng.integers(1, 4, len(ids)).astype(np.float32) if op[2] % 2 else None
            table.push(ids, grads, clicks=clicks, counts=counts, assume_unique=unique)
            model.push(ids, grads, clicks=clicks, counts=counts)
        elif op[0] == "shrink":
            assert table.shrink() == model.shrink()
        else:
            table.advance_clock(op[1])
            model.advance_clock(op[1])
    assert_same_table(table, model)
