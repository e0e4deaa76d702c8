"""GrowableRows against a plain numpy array grown by copying."""

import numpy as np
import pytest

from hoststore import _row_storage
from hoststore._row_storage import GrowableRows

META = np.dtype([("key", "<i8"), ("show", "<f4")], align=True)


@pytest.mark.parametrize(
    "row_shape, dtype, reserve_rows, reservable, copies",
    [
        ((3,), np.float32, 1000, True, 0),  # the reservation covers every size
        ((), META, 1000, True, 0),  # a structured record per row
        ((2, 2), np.float64, 8, True, 1),  # outgrown once: 8 -> 4 * 40 rows reserved
        ((3,), np.float32, 1000, False, 3),  # no reservation possible: copy at each growth
    ],
)
def test_resize_keeps_rows(monkeypatch, row_shape, dtype, reserve_rows, reservable, copies):
    if not reservable:
        monkeypatch.setattr(_row_storage, "_reserve", lambda nbytes: None)
    rows = GrowableRows(row_shape, dtype, reserve_rows=reserve_rows)
    rng = np.random.default_rng(0)
    reference = np.zeros((0, *row_shape), dtype)
    used = 0
    for cap in (5, 9, 40, 160):
        arr = rows.resize(cap, keep=used)
        assert arr.shape == (cap, *row_shape) and arr.dtype == np.dtype(dtype)
        assert arr.flags.writeable and arr.ctypes.data % 64 == 0
        np.testing.assert_array_equal(arr[:used], reference[:used])
        fresh = np.frombuffer(rng.bytes((cap - used) * arr[0].nbytes), dtype)
        arr[used:cap] = fresh.reshape((cap - used, *row_shape))
        reference = arr.copy()
        used = cap
    assert rows.copies == copies


def test_shrinking_the_view_keeps_the_rows():
    rows = GrowableRows((2,), np.int64, reserve_rows=100)
    rows.resize(50, keep=0)[:] = np.arange(100).reshape(50, 2)
    np.testing.assert_array_equal(rows.resize(10, keep=10), np.arange(20).reshape(10, 2))
    np.testing.assert_array_equal(rows.resize(50, keep=10)[:10], np.arange(20).reshape(10, 2))
