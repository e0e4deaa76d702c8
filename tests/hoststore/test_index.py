"""The numba hash index against a Python dict, with deletions that shift probe chains."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoststore import _index as ix

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


def _unmix64(h: int) -> int:
    """Inverse of hashing.mix64 (splitmix64's finalizer), in Python integers."""
    m = (1 << 64) - 1
    h ^= (h >> 31) ^ (h >> 62)
    h = (h * pow(0x94D049BB133111EB, -1, 1 << 64)) & m
    h ^= (h >> 27) ^ (h >> 54)
    h = (h * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & m
    h ^= (h >> 30) ^ (h >> 60)
    return h


def test_a_tag_collision_falls_back_to_comparing_keys():
    """Two keys whose hashes differ only in bit 31 share a home slot and a 31-bit tag: the
    probe must still tell them apart by their keys (the rare path of find_group)."""
    from hoststore._hashing import INDEX_SALT, mix64_np

    h1 = 0x0123456789ABCDEF
    k1, k2 = (np.uint64(_unmix64(h) ^ int(INDEX_SALT)).view(np.int64) for h in (h1, h1 ^ 1 << 31))
    hashes = mix64_np(np.array([k1, k2], np.int64).view(np.uint64) ^ INDEX_SALT)
    assert hashes.tolist() == [h1, h1 ^ 1 << 31]
    index, keys = ix.new_index(16, tagged=True), np.zeros(16, np.int64)
    keys[0] = k1
    ix.insert(index, keys, k1, 0)
    out = np.empty(2, np.int64)
    ix.find_many(index, keys, np.array([k1, k2], np.int64), out)
    assert out.tolist() == [0, -1]
    keys[1] = k2
    ix.insert(index, keys, k2, 1)
    ix.find_many(index, keys, np.array([k2, k1], np.int64), out)
    assert out.tolist() == [1, 0]
    assert ix.delete(index, keys, k1) == 0
    ix.find_many(index, keys, np.array([k2, k1], np.int64), out)
    assert out.tolist() == [1, -1]
