"""A plain-Python model of EmbeddingTable: one dict entry per key, no index, no kernels.

It restates the table's documented semantics step by step (sighting at pull, clicks at
push, duplicate gradients summed in order, admission, lazy decay, eviction order) so the
property tests can compare the real table against it after every operation. Per-row math
comes from the optimizer's pure ``update`` (tested against optax separately) and the
numpy twin of the initializer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hoststore import TableConfig, initial_rows
from hoststore._hashing import ADMIT_SALT, mix64_np, seed_salt, unit_float_np

F32 = np.float32


@dataclasses.dataclass
class Row:
    weights: np.ndarray
    state: tuple
    show: np.float32
    click: np.float32
    last_seen: int
    created: int
    delta_score: float = 0.0  # Paddle's DeltaScore: the score of what was pushed since


@dataclasses.dataclass
class Pending:
    show: int
    click: int
    last_seen: int


class DictTable:
    def __init__(self, config: TableConfig):
        self.cfg = config
        self.clock = 0
        self.train_pulls = 0
        self.rows: dict[int, Row] = {}
        self.pending: dict[int, Pending] = {}
        self.evicted: list[int] = []
        self.rejected = 0
        self.displaced = 0

    def _score(self, show: float, click: float) -> float:
        ev = self.cfg.eviction  # Paddle's ShowClickScore
        return (show - click) * ev.nonclk_coeff + click * ev.click_coeff

    def _touch(self, row: Row) -> None:
        dt = self.clock - row.last_seen
        decay = self.cfg.eviction.decay
        if decay != 1.0 and dt > 0:
            f = decay ** float(dt)
            row.show = F32(float(row.show) * f)
            row.click = F32(float(row.click) * f)
        row.last_seen = self.clock

    def pull(self, ids: np.ndarray, train: bool, shows=None) -> np.ndarray:
        dim = self.cfg.dim
        shows = np.ones(len(ids), F32) if shows is None else np.asarray(shows, F32)
        out = np.full((len(ids), dim), self.cfg.admission.default_value, np.float32)
        if train:
            self.train_pulls += 1
        missing: dict[int, int] = {}  # key -> occurrences, in first-seen order
        for i, k in enumerate(ids.tolist()):
            if k in self.rows:
                row = self.rows[k]
                out[i] = row.weights
                if train:
                    self._touch(row)
                    row.show = F32(row.show + shows[i])
                    row.delta_score += self._score(float(shows[i]), 0.0)
            elif train:
                missing[k] = missing.get(k, 0) + float(shows[i])
        if missing:
            self._admit(missing)
            for i, k in enumerate(ids.tolist()):
                if k in missing and k in self.rows:
                    out[i] = self.rows[k].weights
        return out

    def _admit(self, missing: dict[int, int]) -> None:
        adm = self.cfg.admission
        keys = list(missing)
        admitted: list[tuple[int, float, float]] = []
        if adm.kind == "always":
            admitted = [(k, float(missing[k]), 0.0) for k in keys]
        elif adm.kind == "probability":
            salt = seed_salt(self.cfg.seed, ADMIT_SALT)
            nonce = mix64_np(np.array([self.train_pulls], np.uint64) ^ salt)[0]
            u = unit_float_np(mix64_np(np.array(keys, np.int64).view(np.uint64) ^ nonce))
            for k, draw in zip(keys, u):
                if draw < 1.0 - (1.0 - adm.p) ** missing[k]:
                    admitted.append((k, float(missing[k]), 0.0))
        else:
            newcomers = []
            stayers = []
            for k in keys:
                p = self.pending.get(k)
                show = missing[k] + (p.show if p else 0)
                click = p.click if p else 0
                if adm.kind == "count_filter":
                    ok = show >= adm.n
                else:
                    score = F32(
                        (F32(show) - F32(click)) * F32(adm.nonclk_coeff)
                        + F32(click) * F32(adm.click_coeff)
                    )
                    ok = score >= adm.threshold
                if ok:
                    admitted.append((k, float(show), float(click)))
                elif p:
                    stayers.append((k, show))
                else:
                    newcomers.append((k, show))
            for k, _, _ in admitted:
                self.pending.pop(k, None)
            for k, show in stayers:
                self.pending[k].show = min(show, 65535)
                self.pending[k].last_seen = self.clock
            if len(self.pending) + len(newcomers) > adm.max_pending:
                self._expire_pending()
            short = len(self.pending) + len(newcomers) - adm.max_pending
            if short > 0:  # the stalest give way: oldest sighting, fewest shows, smallest key
                order = sorted(self.pending, key=lambda k: (self.pending[k].last_seen,
                                                            self.pending[k].show, k))  # fmt: skip
                for k in order[:short]:
                    del self.pending[k]
                    self.displaced += 1
            room = max(0, adm.max_pending - len(self.pending))
            self.rejected += max(0, len(newcomers) - room)
            for k, show in newcomers[:room]:
                self.pending[k] = Pending(min(show, 65535), 0, self.clock)
        for k, show, click in admitted:
            init = initial_rows(self.cfg.initializer, self.cfg.seed, np.array([k]), self.cfg.dim)
            state = tuple(s[0] for s in self.cfg.optimizer.init(1, self.cfg.dim))
            self.rows[k] = Row(init[0], state, F32(show), F32(click), self.clock, self.clock,
                               self._score(show, click))  # fmt: skip

    def _expire_pending(self) -> None:
        ttl = self.cfg.admission.pending_ttl
        for k in [k for k, p in self.pending.items() if self.clock - p.last_seen >= ttl]:
            del self.pending[k]

    def push(self, ids, grads, shows=None, clicks=None, counts=None) -> None:
        n = len(ids)
        counts = np.ones(n, F32) if counts is None else np.asarray(counts, F32)
        shows = np.zeros(n, F32) if shows is None else np.asarray(shows, F32)
        clicks = np.zeros(n, F32) if clicks is None else np.asarray(clicks, F32)
        agg: dict[int, list] = {}
        pend: dict[int, list] = {}
        for i, k in enumerate(ids.tolist()):
            if k in self.rows:
                row = self.rows[k]
                if k not in agg:
                    self._touch(row)
                    agg[k] = [grads[i].astype(F32).copy(), F32(0)]
                else:
                    agg[k][0] = agg[k][0] + grads[i].astype(F32)
                agg[k][1] = F32(agg[k][1] + counts[i])
                row.show = F32(row.show + shows[i])
                row.click = F32(row.click + clicks[i])
                row.delta_score += self._score(float(shows[i]), float(clicks[i]))
            elif self.cfg.admission.uses_counters and k in self.pending:
                s = pend.setdefault(k, [0.0, 0.0])
                s[0] += float(shows[i])
                s[1] += float(clicks[i])
        for k, (g, count) in agg.items():
            row = self.rows[k]
            w, st = self.cfg.optimizer.update(
                g[None], tuple(s[None] for s in row.state), row.weights[None], self.clock,
                np.array([count], F32), self.cfg.weight_bounds,
            )  # fmt: skip
            row.weights, row.state = w[0], tuple(s[0] for s in st)
        for k, (s, c) in pend.items():
            p = self.pending[k]
            p.show = min(p.show + int(np.rint(s)), 65535)
            p.click = min(p.click + int(np.rint(c)), 65535)
            p.last_seen = self.clock

    def advance_clock(self, n: int = 1) -> None:
        self.clock += n

    def score(self, row: Row) -> float:
        ev = self.cfg.eviction
        f = ev.decay ** float(self.clock - row.last_seen)
        show = float(F32(float(row.show) * f))
        click = float(F32(float(row.click) * f))
        return (show - click) * ev.nonclk_coeff + click * ev.click_coeff

    def shrink(self) -> int:
        ev = self.cfg.eviction
        kill = set()
        for row in self.rows.values():  # Paddle decays first, then judges
            row.show = F32(row.show * F32(ev.shrink_decay))
            row.click = F32(row.click * F32(ev.shrink_decay))
        for k, row in self.rows.items():
            if ev.unseen_ticks is not None and self.clock - row.last_seen > ev.unseen_ticks:
                kill.add(k)
            if ev.min_score is not None and self.score(row) < ev.min_score:
                kill.add(k)
        keep = [k for k in self.rows if k not in kill]
        if ev.max_rows is not None and len(keep) > ev.max_rows:
            keep.sort(key=lambda k: (self.score(self.rows[k]), self.rows[k].last_seen, k))
            kill.update(keep[: len(keep) - ev.max_rows])
        for k in kill:
            del self.rows[k]
        self.evicted.extend(sorted(kill))
        self._expire_pending()
        return len(kill)
