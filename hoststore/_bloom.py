"""Which keys may be on disk: an in-RAM bloom filter over a table's cold keys.

Most keys a training pull misses in RAM are new, not cold. RocksDB's own bloom filters
answer those without a disk read, but each question still costs a Python call into the
engine (~1 us a key); this filter answers a batch in compiled code at 8-16 bits (1-2 bytes)
per cold key, so only the keys that may be on disk go to the engine. It grows by layers
(each twice the last: no rescan as the tier fills) and never forgets a key (a bloom filter
cannot delete): keys gone from disk cost a wasted read until the owner rebuilds it from
a key scan (:class:`hoststore.disk_tier.ColdRows` does when most of it is stale, or when
it has grown too many layers: an absent key probes every layer).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from hoststore._hashing import mix64

_SALT = np.uint64(0x452821E638D01377)
_HASHES = 6  # with 8 bits per key: ~2% false positives per layer (fewer when rounded up)
_BITS_PER_KEY = 8
_FIRST_LAYER_KEYS = 1 << 16
_S32 = np.uint64(32)
_S6 = np.uint64(6)
_ONE = np.uint64(1)
_M63 = np.uint64(63)


@nb.njit(nogil=True, cache=True)
def _add(bits, keys):
    mask = np.uint64(bits.shape[0] * 64 - 1)
    for i in range(keys.shape[0]):
        h = mix64(np.uint64(keys[i]) ^ _SALT)
        h1, h2 = h & np.uint64(0xFFFFFFFF), (h >> _S32) | _ONE
        for j in range(_HASHES):
            b = (h1 + np.uint64(j) * h2) & mask
            bits[b >> _S6] |= _ONE << (b & _M63)


@nb.njit(nogil=True, cache=True)
def _query(bits, keys, out):
    """out[i] |= key i may be in this layer."""
    mask = np.uint64(bits.shape[0] * 64 - 1)
    for i in range(keys.shape[0]):
        if out[i]:
            continue
        h = mix64(np.uint64(keys[i]) ^ _SALT)
        h1, h2 = h & np.uint64(0xFFFFFFFF), (h >> _S32) | _ONE
        hit = True
        for j in range(_HASHES):
            b = (h1 + np.uint64(j) * h2) & mask
            if not (bits[b >> _S6] >> (b & _M63)) & _ONE:
                hit = False
                break
        out[i] = hit


def _layer(keys: int) -> np.ndarray:
    words = 1 << max(0, int(np.ceil(np.log2(keys * _BITS_PER_KEY / 64))))
    return np.zeros(words, np.uint64)


class KeyFilter:
    """A scalable bloom filter of int64 keys (no false negatives)."""

    def __init__(self, capacity: int = _FIRST_LAYER_KEYS):
        self._layers: list[list] = []  # [bits, capacity, added]
        self._grow(max(_FIRST_LAYER_KEYS, capacity))

    @property
    def layers(self) -> int:
        return len(self._layers)

    def _grow(self, capacity: int) -> None:
        self._layers.append([_layer(capacity), capacity, 0])

    def add(self, keys: np.ndarray) -> None:
        keys = np.ascontiguousarray(keys, np.int64).view(np.uint64)
        while len(keys):
            layer = self._layers[-1]
            room = layer[1] - layer[2]
            if room <= 0:
                self._grow(2 * layer[1])
                continue
            part, keys = keys[:room], keys[room:]
            _add(layer[0], part)
            layer[2] += len(part)

    def may_contain(self, keys: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(keys, np.int64).view(np.uint64)
        out = np.zeros(len(keys), np.bool_)
        for bits, _, added in self._layers:
            if added:
                _query(bits, keys, out)
        return out

    @property
    def nbytes(self) -> int:
        return sum(layer[0].nbytes for layer in self._layers)
