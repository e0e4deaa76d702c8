"""Admission: when a new key earns a row (Paddle's "entry" of ``sparse_embedding``).

:class:`Admission` is the policy (a frozen value); :func:`admit` is its decision for a
block of keys that have no row yet. The table keeps the counters of keys still waiting
(see :mod:`hoststore._pending`) and creates the rows that :func:`admit` lets in.

Example::

    adm = hoststore.count_filter(3)                     # a row at the 3rd sighting
    admit(adm, shows=np.array([1.0, 3.0]), clicks=np.zeros(2), draws=None)  # [False, True]
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hoststore._hashing import mix64_np, unit_float_np

KINDS = ("always", "probability", "count_filter", "show_click")


@dataclasses.dataclass(frozen=True)
class Admission:
    """When a new key earns a row (Paddle's "entry").

    kind:
      - "always": every training sighting of a new key creates its row.
      - "probability": each training sighting admits with probability ``p``.
      - "count_filter": admitted at the ``n``-th training sighting.
      - "show_click": admitted once (show - click) * nonclk_coeff + click * click_coeff
        reaches ``threshold`` (shows are training sightings, clicks come with pushes).
    A key waiting for admission ("pending") pulls ``default_value`` in every coordinate,
    its gradients are dropped, and it costs one small counter (16 bytes of entry plus its
    index slot). At most ``max_pending`` counters exist; a counter unseen for
    ``pending_ttl`` clock ticks (default 168: a week of hourly ticks) expires at the next
    shrink; when the counters are full, expired ones are dropped first, then the stalest
    give way to new keys (both counted).
    """

    kind: str = "always"
    p: float = 1.0
    n: int = 1
    threshold: float = 0.0
    nonclk_coeff: float = 0.1
    click_coeff: float = 1.0
    default_value: float = 0.0
    max_pending: int = 1 << 22
    pending_ttl: int = 168

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown admission kind {self.kind!r}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"admission probability must be in [0, 1], got {self.p}")
        if self.n < 1:
            raise ValueError(f"count_filter n must be >= 1, got {self.n}")
        if self.max_pending < 1 or self.pending_ttl < 1:
            raise ValueError("max_pending and pending_ttl must be >= 1")

    @property
    def uses_counters(self) -> bool:
        """Whether keys wait in the pending-counter table (count and score policies)."""
        return self.kind in ("count_filter", "show_click")


def always() -> Admission:
    return Admission("always")


def probability(p: float, **kw) -> Admission:
    return Admission("probability", p=p, **kw)


def count_filter(n: int, **kw) -> Admission:
    return Admission("count_filter", n=n, **kw)


def show_click(
    threshold: float, nonclk_coeff: float = 0.1, click_coeff: float = 1.0, **kw
) -> Admission:
    return Admission(
        "show_click", threshold=threshold, nonclk_coeff=nonclk_coeff, click_coeff=click_coeff, **kw
    )


def admit(
    adm: Admission, shows: np.ndarray, clicks: np.ndarray, draws: np.ndarray | None
) -> np.ndarray:
    """The keys that get a row now, as a bool mask.

    ``shows`` and ``clicks`` are each key's counts so far, this sighting included (for
    "probability", ``shows`` is the number of sightings in this call); ``draws`` are
    uniform [0, 1) numbers per key, needed by "probability" only.
    """
    if adm.kind == "always":
        return np.ones(len(shows), bool)
    if adm.kind == "probability":
        return draws < 1.0 - (1.0 - adm.p) ** shows
    if adm.kind == "count_filter":
        return shows >= adm.n
    score = (shows - clicks) * adm.nonclk_coeff + clicks * adm.click_coeff
    return score >= adm.threshold


def draws(keys: np.ndarray, salt: np.uint64, train_pulls: int) -> np.ndarray:
    """Uniform [0, 1) draws for "probability": a function of (table seed via ``salt``, key,
    number of training pulls so far), so a replay draws the same numbers."""
    nonce = mix64_np(np.array([train_pulls], np.uint64) ^ salt)[0]
    return unit_float_np(mix64_np(keys.view(np.uint64) ^ nonce))


def parse(text: str) -> Admission:
    """The command-line form: always, probability:P, count_filter:N or show_click:T."""
    kind, _, arg = text.partition(":")
    try:
        if kind == "always" and not arg:
            return always()
        if kind == "probability":
            return probability(float(arg))
        if kind == "count_filter":
            return count_filter(int(arg))
        if kind == "show_click":
            return show_click(float(arg))
    except ValueError as e:
        raise ValueError(f"bad admission {text!r}: {e}") from None
    raise ValueError(
        f"unknown admission {text!r}; use always, probability:P, count_filter:N, show_click:T"
    )
