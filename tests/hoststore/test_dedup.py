"""dedup_slots against a dict model: keys per slot, first-seen order, counts and clicks."""

from __future__ import annotations

import numpy as np
import pytest

import hoststore as hs


def _key(raw, salt):
    return int(hs.hash64(np.array([raw], np.uint64) ^ salt).view(np.int64)[0])


def _reference(slot_ids, max_lens, salts, labels, first, count):
    order, counts, clicks = {}, {}, {}
    for s, per_example in enumerate(slot_ids):
        for i in range(count):
            for raw in per_example[first + i][: max_lens[s]]:
                key = _key(raw, salts[s])
                order.setdefault(key, len(order))
                counts[key] = counts.get(key, 0) + 1
                clicks[key] = clicks.get(key, 0) + labels[i]
    keys = list(order)
    return keys, [counts[k] for k in keys], [clicks[k] for k in keys]


@pytest.mark.parametrize("first,count", [(0, 6), (0, 3), (2, 3), (5, 1), (3, 0)])
def test_dedup_slots_of_a_window_matches_a_dict_model(first, count):
    rng = np.random.default_rng(first * 10 + count)
    n, max_lens = 6, np.array([2, 3], np.int64)
    slot_ids = [[list(rng.integers(0, 5, rng.integers(0, 4))) for _ in range(n)]
                for _ in range(2)]  # fmt: skip
    salts = np.array([11, 12], np.uint64)
    flat = [np.array([x for ex in slot for x in ex], np.int64) for slot in slot_ids]
    offsets = np.stack([np.cumsum([0] + [len(ex) for ex in slot]) for slot in slot_ids])
    bases = np.array([0, len(flat[0])], np.int64)
    batch = 8
    labels = np.zeros(batch, np.float32)
    labels[:count] = rng.integers(0, 2, count)
    d = hs.dedup_slots(np.concatenate(flat), bases, offsets.astype(np.int64), max_lens, salts,
                       labels, batch, first=first, count=count)  # fmt: skip
    keys, counts, clicks = _reference(slot_ids, max_lens, salts, labels, first, count)
    assert d.unique.tolist() == keys
    assert d.counts.tolist() == counts
    assert d.clicks.tolist() == clicks
    for s in range(2):  # each kept position points at its key
        for i in range(count):
            kept = [_key(raw, salts[s]) for raw in slot_ids[s][first + i][: max_lens[s]]]
            assert d.mask[s, i].sum() == len(kept)
            assert d.unique[d.index[s, i, : len(kept)]].tolist() == kept
    assert not d.mask[:, count:].any()
