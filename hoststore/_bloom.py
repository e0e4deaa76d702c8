"""Which keys may be on disk: an in-RAM bloom filter over a table's cold keys.

Most keys a training pull misses in RAM are new, not cold. Each run file of the tier has a
filter of its own (one layer, sized to its keys), but a new key would probe every run's;
one filter over all cold keys answers a batch in compiled code at ~10 bits (1.25 bytes) per
cold key, up to twice that while a layer fills, so only the keys that may be on disk go to
the runs. It grows by layers (each twice the last: no rescan as the tier
fills) and never forgets a key (a bloom filter cannot delete): keys gone from disk cost a
wasted read until the owner rebuilds it from a key scan
(:class:`hoststore.disk_tier.ColdRows` does when most of it is stale, or when it has grown
too many layers: an absent key probes every layer).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from hoststore._hashing import mix64

_SALT = np.uint64(0x452821E638D01377)
# A blocked bloom filter: each key sets its bits inside one 512-bit block (one cache line),
# picked by a multiply-shift (no power-of-two rounding: a layer is sized to its keys).
_HASHES = 6
_BITS_PER_KEY = 10  # ~1.5% false positives per full layer (blocked: a little above ~0.8%)
_BLOCK_WORDS = 8
_FIRST_LAYER_KEYS = 1 << 16
_S32 = np.uint64(32)
_S6 = np.uint64(6)
_S17 = np.uint64(17)
_ONE = np.uint64(1)
_M511 = np.uint64(511)
_M63 = np.uint64(63)
_LOW = np.uint64(0xFFFFFFFF)


@nb.njit(inline="always", cache=True)
def _block_and_hashes(key, n_blocks):
    h = mix64(key ^ _SALT)
    block = ((h >> _S32) * np.uint64(n_blocks)) >> _S32  # multiply-shift: no modulo
    return block, h & _LOW, ((h >> _S17) & _LOW) | _ONE


@nb.njit(nogil=True, cache=True)
def _add(bits, keys):
    n_blocks = bits.shape[0] // _BLOCK_WORDS
    for i in range(keys.shape[0]):
        blk, h1, h2 = _block_and_hashes(keys[i], n_blocks)
        base = blk * np.uint64(_BLOCK_WORDS)
        for j in range(_HASHES):
            b = (h1 + np.uint64(j) * h2) & _M511
            bits[base + (b >> _S6)] |= _ONE << (b & _M63)


@nb.njit(inline="always", cache=True)
def may_hold(bits, key):
    """Whether ``key`` (uint64) may be in the layer ``bits``."""
    blk, h1, h2 = _block_and_hashes(key, bits.shape[0] // _BLOCK_WORDS)
    base = blk * np.uint64(_BLOCK_WORDS)
    for j in range(_HASHES):
        b = (h1 + np.uint64(j) * h2) & _M511
        if not (bits[base + (b >> _S6)] >> (b & _M63)) & _ONE:
            return False
    return True


@nb.njit(nogil=True, cache=True)
def _query(bits, keys, out):
    """out[i] |= key i may be in this layer."""
    for i in range(keys.shape[0]):
        if not out[i]:
            out[i] = may_hold(bits, keys[i])


def _layer(keys: int) -> np.ndarray:
    blocks = max(1, -(-keys * _BITS_PER_KEY // 512))
    return np.zeros(blocks * _BLOCK_WORDS, np.uint64)


class KeyFilter:
    """A scalable bloom filter of int64 keys (no false negatives)."""

    def __init__(self, capacity: int = _FIRST_LAYER_KEYS):
        self._layers: list[list] = []  # [bits, capacity, added]
        self._table: np.ndarray | None = None  # see layer_table
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
            self._table = None

    def may_contain(self, keys: np.ndarray) -> np.ndarray:
        keys = np.ascontiguousarray(keys, np.int64).view(np.uint64)
        out = np.zeros(len(keys), np.bool_)
        for bits, _, added in self._layers:
            if added:
                _query(bits, keys, out)
        return out

    def layer_table(self) -> np.ndarray:
        """(address, words) of each layer that holds keys, for compiled code to probe with
        :func:`may_hold` (see :func:`hoststore._kernels.pointer`); valid while the filter
        lives (its layers' bits never move)."""
        if self._table is None:
            rows = [(bits.ctypes.data, len(bits)) for bits, _, added in self._layers if added]
            self._table = np.array(rows, np.int64).reshape(len(rows), 2)
        return self._table

    @property
    def only_layer(self) -> np.ndarray:
        """The bits of a filter that never outgrew its first layer (for :func:`may_hold`)."""
        if len(self._layers) != 1:
            raise ValueError(f"the filter has {len(self._layers)} layers, not one")
        return self._layers[0][0]

    @property
    def nbytes(self) -> int:
        return sum(layer[0].nbytes for layer in self._layers)
