"""The numba hash index against a Python dict, with deletions that shift probe chains."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoststore import index as ix

I64 = np.iinfo(np.int64)


@pytest.mark.parametrize("tagged", [False, True])
@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(I64.min, I64.max) | st.integers(-20, 20)),
        max_size=200,
    )
)
def test_insert_delete_find_match_a_dict(tagged, ops):
    cap = 256
    index = ix.new_index(cap, tagged=tagged)
    keys = np.zeros(cap, np.int64)
    ref: dict[int, int] = {}
    free = list(range(cap))
    for is_insert, k in ops:
        if is_insert and k not in ref:
            e = free.pop()
            keys[e] = k
            ix.insert(index, keys, np.int64(k), e)
            ref[k] = e
        elif not is_insert:
            e = ix.delete(index, keys, np.int64(k))
            assert e == ref.pop(k, -1)
            if e >= 0:
                free.append(e)
    probe = np.array(list(ref) + [k for _, k in ops], np.int64)
    out = np.empty(len(probe), np.int64)
    ix.find_many(index, keys, probe, out)
    assert out.tolist() == [ref.get(k, -1) for k in probe.tolist()]


@pytest.mark.parametrize("n, universe", [(0, 1), (1, 1), (1000, 10), (5000, 10**18)])
def test_unique_with_inverse_matches_numpy(n, universe):
    keys = np.random.default_rng(n).integers(-universe, universe, n, dtype=np.int64)
    uniq, inverse, counts = ix.unique_with_inverse(keys)
    np.testing.assert_array_equal(uniq[inverse], keys)
    ref_u, ref_c = np.unique(keys, return_counts=True)
    order = np.argsort(uniq)
    np.testing.assert_array_equal(uniq[order], ref_u)
    np.testing.assert_array_equal(counts[order], ref_c)
    first = [keys.tolist().index(k) for k in uniq.tolist()[:50]]
    assert first == sorted(first)  # first-seen order
