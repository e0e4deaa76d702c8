"""Argument checks shared by every store: a bad call is a ValueError naming the flaw,
raised before any table changes."""

from __future__ import annotations

from typing import Any

import numba as nb
import numpy as np

from hoststore.config import TableConfig

MAX_GRAD = 1e15  # its square stays 1e8x below float32's largest value
_OK, _NOT_FINITE, _NEGATIVE, _TOO_LARGE = 0, 1, 2, 3


@nb.njit(nogil=True, cache=True)
def _first_flaw(x, allow_negative, limit):
    """One pass over float32 ``x`` without the GIL (a trainer's pusher checks every batch
    while its other stages run): the first flaw found, or _OK."""
    flat = x.reshape(-1)
    for i in range(flat.size):
        v = flat[i]
        if not np.isfinite(v):
            return _NOT_FINITE
        if v < 0 and not allow_negative:
            return _NEGATIVE
        if abs(v) > limit:
            return _TOO_LARGE
    return _OK


def all_finite(x: np.ndarray) -> bool:
    """Whether every value of a float array is finite (one GIL-free pass)."""
    return _first_flaw(np.ascontiguousarray(x), True, np.inf) != _NOT_FINITE


def check_ids(ids: Any, what: str = "ids") -> np.ndarray:
    """A contiguous int64 view of a 1-D int64/uint64 array, or a ValueError naming the flaw."""
    if not isinstance(ids, np.ndarray):
        raise ValueError(f"{what} must be a numpy array of int64, got {type(ids).__name__}")
    if ids.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {ids.shape}")
    if ids.dtype == np.uint64:
        return np.ascontiguousarray(ids).view(np.int64)
    if ids.dtype != np.int64:
        raise ValueError(f"{what} must have dtype int64 (or uint64), got {ids.dtype}")
    return np.ascontiguousarray(ids)


def check_per_id(x: Any, n: int, what: str, default: float = 0.0) -> np.ndarray:
    """A float32 [n] array of finite non-negative numbers (``default`` everywhere if None)."""
    if x is None:
        return np.full(n, default, np.float32)
    x = np.asarray(x)
    if x.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},) like ids, got {x.shape}")
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if _first_flaw(x, False, np.inf) != _OK:
        raise ValueError(f"{what} must be finite and non-negative")
    return x


def check_push(config: TableConfig, ids, grads, shows, clicks, counts=None):
    """Validated, normalized push arguments (ids, grads, shows, clicks, counts), or a
    ValueError naming the problem."""
    ids = check_ids(ids)
    n = len(ids)
    if not isinstance(grads, np.ndarray) or not np.issubdtype(grads.dtype, np.floating):
        raise ValueError("grads must be a floating-point numpy array")
    if grads.shape != (n, config.dim):
        raise ValueError(
            f"grads must have shape ({n}, {config.dim}) for {n} ids in table "
            f"{config.name!r} (dim {config.dim}), got {grads.shape}"
        )
    grads = np.ascontiguousarray(grads, dtype=np.float32)
    flaw = _first_flaw(grads, True, MAX_GRAD)
    if flaw == _NOT_FINITE:
        raise ValueError(f"grads for table {config.name!r} contain NaN or Inf")
    if flaw == _TOO_LARGE:
        raise ValueError(f"grads for table {config.name!r} exceed {MAX_GRAD:g} in magnitude "
                         "(squared, they would overflow an optimizer's float32 state)")  # fmt: skip
    return (ids, grads, check_per_id(shows, n, "shows"), check_per_id(clicks, n, "clicks"),
            check_per_id(counts, n, "counts", 1.0))  # fmt: skip
