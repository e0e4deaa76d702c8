"""Eviction: how rows are forgotten (Paddle's ``shrink``).

:class:`Eviction` is the policy (a frozen value); :func:`scores` and :func:`victims` are
its decisions over the live rows of a table, taken at each ``shrink()``. The table
deletes the victims and records their keys, so the next delta snapshot carries them.

Example::

    ev = hoststore.Eviction(unseen_ticks=72, max_rows=50_000_000)
    kill = victims(ev, clock, last_seen, score, keys)   # bool mask over the rows
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Eviction:
    """How rows are forgotten (Paddle's "shrink"); every part is optional and they combine.

    Each ``shrink()``, in Paddle's order (``CtrCommonAccessor::Shrink``):

    - ``shrink_decay`` (Paddle's ``show_click_decay_rate``): show and click of every row are
      multiplied by it, once per shrink (Paddle shrinks once a day).
    - ``unseen_ticks`` (``delete_after_unseen_days``, in clock ticks): rows unseen for
      *more* than that many ticks are deleted.
    - ``min_score`` (``delete_threshold``): rows whose score
      (show - click) * nonclk_coeff + click * click_coeff is below it are deleted.
    - ``max_rows`` (no Paddle counterpart): then the lowest-score rows (ties: least
      recently seen, then smallest key) go until at most ``max_rows`` remain.

    ``decay`` is a finer-grained alternative to ``shrink_decay``: show and click are
    multiplied by it per clock tick, applied lazily (a row stores its counts as of its last
    sighting, so ticking the clock is O(1) and dirties no row for the next delta).
    """

    decay: float = 1.0
    unseen_ticks: int | None = None
    min_score: float | None = None
    max_rows: int | None = None
    nonclk_coeff: float = 0.1
    click_coeff: float = 1.0
    shrink_decay: float = 1.0

    def __post_init__(self):
        for name in ("decay", "shrink_decay"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.unseen_ticks is not None and self.unseen_ticks < 1:
            raise ValueError("unseen_ticks must be >= 1")
        if self.max_rows is not None and self.max_rows < 0:
            raise ValueError("max_rows must be >= 0")


def decayed(ev: Eviction, counts: np.ndarray, ticks_unseen: np.ndarray) -> np.ndarray:
    """Counts stored as of a row's last sighting, brought to now (float32)."""
    return (counts * ev.decay ** ticks_unseen.astype(float)).astype(np.float32)


def scores(ev: Eviction, show: np.ndarray, click: np.ndarray) -> np.ndarray:
    """The show/click score of rows (float64), from their decayed counts."""
    show, click = show.astype(np.float64), click.astype(np.float64)
    return (show - click) * ev.nonclk_coeff + click * ev.click_coeff


def victims(
    ev: Eviction, ticks_unseen: np.ndarray, score: np.ndarray, keys: np.ndarray
) -> np.ndarray:
    """The rows one shrink deletes, as a bool mask: unseen for more than ``unseen_ticks``,
    scored below ``min_score``, then the lowest scores (ties: least recently seen, then
    smallest key) beyond ``max_rows``."""
    kill = np.zeros(len(score), bool)
    if ev.unseen_ticks is not None:
        kill |= ticks_unseen > ev.unseen_ticks
    if ev.min_score is not None:
        kill |= score < ev.min_score
    keep = np.flatnonzero(~kill)
    if ev.max_rows is not None and len(keep) > ev.max_rows:
        order = np.lexsort((keys[keep], -ticks_unseen[keep], score[keep]))
        kill[keep[order[: len(keep) - ev.max_rows]]] = True
    return kill


def parse(text: str) -> Eviction:
    """The command-line form: comma-separated key:value parts, e.g.
    ``unseen:72,score:0.5,max_rows:1000000,shrink_decay:0.98`` (empty: keep everything);
    ``decay:D`` is the lazy per-tick decay."""
    names = {"unseen": "unseen_ticks", "score": "min_score", "max_rows": "max_rows",
             "decay": "decay", "shrink_decay": "shrink_decay"}  # fmt: skip
    kw = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, val = part.partition(":")
        if key not in names or not val:
            raise ValueError(f"bad eviction part {part!r}; use {', '.join(names)} as key:value")
        try:
            kw[names[key]] = float(val) if key in ("score", "decay", "shrink_decay") else int(val)
        except ValueError:
            raise ValueError(f"bad eviction part {part!r}: {val!r} is not a number") from None
    return Eviction(**kw)
