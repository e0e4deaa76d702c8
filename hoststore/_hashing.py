"""64-bit key mixing shared by the index, the initializers, admission draws and sharding.

Every function here has a numba version (used inside compiled kernels) and a numpy version
(used by Python code and by tests as an independent check). Both compute splitmix64's
finalizer on the key's two's-complement bits, so any int64 (or uint64 reinterpreted) is a
valid key.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_TWO_M53 = 1.0 / 9007199254740992.0

# Salts keep the hash used for sharding independent of the one used inside a shard's
# index (otherwise every key on shard s would land in the same index buckets).
INDEX_SALT = np.uint64(0x243F6A8885A308D3)
SHARD_SALT = np.uint64(0x13198A2E03707344)
INIT_SALT = np.uint64(0xA4093822299F31D0)
ADMIT_SALT = np.uint64(0x082EFA98EC4E6C89)


@nb.njit(inline="always", cache=True)
def mix64(x: np.uint64) -> np.uint64:
    """splitmix64 finalizer: a bijection of uint64 with full avalanche."""
    x = (x ^ (x >> _S30)) * _M1
    x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


@nb.njit(inline="always", cache=True)
def unit_float(h: np.uint64) -> float:
    """The top 53 bits of h as a float64 in [0, 1)."""
    return float(h >> _S11) * _TWO_M53


def mix64_np(x: np.ndarray) -> np.ndarray:
    """numpy twin of :func:`mix64` over a uint64 array (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> _S30)) * _M1
        x = (x ^ (x >> _S27)) * _M2
    return x ^ (x >> _S31)


def unit_float_np(h: np.ndarray) -> np.ndarray:
    return (h >> _S11).astype(np.float64) * _TWO_M53


def keys_as_uint64(keys: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(keys).view(np.uint64)


def seed_salt(seed: int, salt: np.uint64) -> np.uint64:
    """A per-table 64-bit salt from a user seed (any Python int)."""
    s = np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64)
    return mix64_np(s ^ salt)[0]


def shard_of(keys: np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index of every key: a fixed hash, the same in every process and version."""
    if num_shards <= 0:
        raise ValueError(f"num_shards must be positive, got {num_shards}")
    h = mix64_np(keys_as_uint64(keys) ^ SHARD_SALT)
    return ((h >> np.uint64(32)) * np.uint64(num_shards) >> np.uint64(32)).astype(np.int64)
