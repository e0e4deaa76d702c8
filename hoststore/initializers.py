"""Initial rows as a pure function of (table seed, key, coordinate).

A key gets the same initial row whatever the arrival order, the batch it came in or the
number of shards, because nothing here depends on state. ``write_initial_rows`` is the
compiled form used by the table; ``initial_rows`` is an independent numpy twin.
"""

from __future__ import annotations

import math

import numba as nb
import numpy as np

from hoststore._hashing import (
    _GOLDEN,
    INIT_SALT,
    mix64,
    mix64_np,
    seed_salt,
    unit_float,
    unit_float_np,
)
from hoststore.config import Initializer

KIND_CODES = {"zeros": 0, "uniform": 1, "normal": 2}


@nb.njit(nogil=True, cache=True)
def write_initial_rows(out, rows, keys, kind, scale, salt):
    """out[rows[i]] <- initial row of keys[i]."""
    dim = out.shape[1]
    for i in range(rows.shape[0]):
        r = rows[i]
        base = mix64(np.uint64(keys[i]) ^ salt)
        for j in range(dim):
            if kind == 0:
                out[r, j] = 0.0
            elif kind == 1:
                u = unit_float(mix64(base + np.uint64(j) * _GOLDEN))
                out[r, j] = scale * (2.0 * u - 1.0)
            else:
                u1 = unit_float(mix64(base + np.uint64(2 * j) * _GOLDEN))
                u2 = unit_float(mix64(base + np.uint64(2 * j + 1) * _GOLDEN))
                out[r, j] = (
                    scale * math.sqrt(-2.0 * math.log(1.0 - u1)) * math.cos(2.0 * math.pi * u2)
                )


def table_salt(seed: int) -> np.uint64:
    return seed_salt(seed, INIT_SALT)


def initial_rows(init: Initializer, seed: int, keys: np.ndarray, dim: int) -> np.ndarray:
    """numpy reference: the (len(keys), dim) float32 initial rows."""
    keys = np.ascontiguousarray(keys, dtype=np.int64).view(np.uint64)
    if init.kind == "zeros":
        return np.zeros((len(keys), dim), np.float32)
    base = mix64_np(keys ^ table_salt(seed))[:, None]
    j = np.arange(dim, dtype=np.uint64)[None, :]
    with np.errstate(over="ignore"):
        if init.kind == "uniform":
            u = unit_float_np(mix64_np(base + j * _GOLDEN))
            return (init.scale * (2.0 * u - 1.0)).astype(np.float32)
        u1 = unit_float_np(mix64_np(base + (2 * j) * _GOLDEN))
        u2 = unit_float_np(mix64_np(base + (2 * j + np.uint64(1)) * _GOLDEN))
    z = np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)
    return (init.scale * z).astype(np.float32)
