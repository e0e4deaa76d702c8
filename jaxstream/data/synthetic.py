"""A synthetic, drifting click stream with a known ground truth, in Criteo format.

Each of 26 slots has a vocabulary of IDs with power-law popularity. IDs are born and fade
over the hours (a share of them lives forever), so a model must keep learning new IDs and
can forget old ones. The true click probability is

    logit = bias + sum_s w_s[id_s] + sum_(a,b) <v_a[id_a], v_b[id_b]> + beta . log1p(dense)

Partitions are written as ``ROOT/YYYYMMDD/HH/part-00000`` with a ``_SUCCESS`` marker and a
``truth.npz`` holding, per line, the true probability and the "seen-k ceiling": the true
model with the terms of IDs seen fewer than k times before left out (what any learner that
needs k sightings of an ID could at best know).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import time

import numba as nb
import numpy as np

log = logging.getLogger(__name__)

NUM_SLOTS = 26
NUM_DENSE = 13


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    hours: int = 24
    rows_per_hour: int = 50_000
    start: str = "20260101"  # YYYYMMDD of the first hour (hour 00)
    min_vocab: int = 20
    max_vocab: int = 200_000
    zipf: float = 1.1
    persistent_fraction: float = 0.3  # IDs alive for the whole stream
    mean_lifetime_hours: float = 12.0
    weight_std: float = 0.5
    num_pairs: int = 6
    latent_dim: int = 4
    latent_std: float = 0.35
    dense_weight: float = 0.15
    missing_rate: float = 0.05
    base_ctr: float = 0.2
    seen_k: int = 5
    seed: int = 0


@dataclasses.dataclass
class _Slot:
    raw: np.ndarray  # the value written to the file (uint32 as int64)
    pop: np.ndarray  # popularity weight
    birth: np.ndarray  # hour
    death: np.ndarray
    w: np.ndarray
    v: np.ndarray  # [V, latent_dim]
    seen: np.ndarray  # sightings so far


class SyntheticStream:
    """Generates hour after hour; ``write_hour`` lays one partition on disk."""

    def __init__(self, cfg: StreamConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self._rng = rng
        vocab = np.geomspace(cfg.min_vocab, cfg.max_vocab, NUM_SLOTS).astype(int)
        self.slots = []
        for s in range(NUM_SLOTS):
            n = int(vocab[rng.permutation(NUM_SLOTS)[s]])
            raw = rng.choice(2**32, size=n, replace=False).astype(np.int64)
            rank = rng.permutation(n) + 1
            persistent = rng.random(n) < cfg.persistent_fraction
            birth = np.where(persistent, -1e9, rng.uniform(-cfg.mean_lifetime_hours, cfg.hours, n))
            life = rng.exponential(cfg.mean_lifetime_hours, n)
            death = np.where(persistent, 1e9, birth + np.maximum(life, 1.0))
            std = cfg.weight_std * rng.uniform(0.3, 1.5)
            self.slots.append(
                _Slot(
                    raw,
                    rank.astype(np.float64) ** -cfg.zipf,
                    birth,
                    death,
                    rng.normal(0, std, n),
                    rng.normal(0, cfg.latent_std, (n, cfg.latent_dim)),
                    np.zeros(n, np.int64),
                )
            )
        self.pairs = [tuple(rng.choice(NUM_SLOTS, 2, replace=False)) for _ in range(cfg.num_pairs)]
        self.beta = rng.normal(0, cfg.dense_weight, NUM_DENSE)
        self.dense_scale = rng.uniform(0.5, 4.0, NUM_DENSE)
        self.bias = 0.0
        self.bias = self._calibrate_bias()

    def _calibrate_bias(self) -> float:
        # Solve mean(sigmoid(bias + z)) = base_ctr on a sample of logits of hour 0.
        z = self._sample(0, 20_000, np.random.default_rng(self.cfg.seed + 1), count=False)[3]
        lo, hi = -10.0, 10.0
        for _ in range(50):
            mid = (lo + hi) / 2
            if np.mean(1 / (1 + np.exp(-(mid + z)))) < self.cfg.base_ctr:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def _sample(self, hour: int, n: int, rng, count: bool):
        cfg = self.cfg
        idx = np.empty((n, NUM_SLOTS), np.int64)
        present = rng.random((n, NUM_SLOTS)) >= cfg.missing_rate
        prior = np.zeros((n, NUM_SLOTS), np.int64)
        for s, slot in enumerate(self.slots):
            alive = (slot.birth <= hour) & (hour < slot.death)
            p = slot.pop * alive
            idx[:, s] = rng.choice(len(p), size=n, p=p / p.sum())
            if count:
                prior[:, s] = _prior_counts(idx[:, s], present[:, s], slot.seen)
        dense_raw = rng.poisson(np.exp(rng.normal(0, 1, (n, NUM_DENSE))) * self.dense_scale)
        dense_x = np.log1p(dense_raw)
        terms = np.zeros((n, NUM_SLOTS))
        for s, slot in enumerate(self.slots):
            terms[:, s] = slot.w[idx[:, s]] * present[:, s]
        pair_terms = np.zeros((n, len(self.pairs)))
        for j, (a, b) in enumerate(self.pairs):
            va = self.slots[a].v[idx[:, a]]
            vb = self.slots[b].v[idx[:, b]]
            pair_terms[:, j] = (va * vb).sum(1) * present[:, a] * present[:, b]
        dense_term = (dense_x - dense_x.mean(0)) @ self.beta
        z = terms.sum(1) + pair_terms.sum(1) + dense_term
        return idx, present, dense_raw, z, terms, pair_terms, dense_term, prior

    def hour(self, hour: int) -> dict[str, np.ndarray]:
        """The rows of one hour: labels, features and the truth."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, hour])
        idx, present, dense_raw, z, terms, pair_terms, dense_term, prior = self._sample(
            hour, cfg.rows_per_hour, rng, count=True
        )
        p_true = 1 / (1 + np.exp(-(self.bias + z)))
        known = prior >= cfg.seen_k
        kept = (terms * known).sum(1) + dense_term
        for j, (a, b) in enumerate(self.pairs):
            kept += pair_terms[:, j] * known[:, a] * known[:, b]
        p_seen = 1 / (1 + np.exp(-(self.bias + kept)))
        labels = (rng.random(len(p_true)) < p_true).astype(np.int64)
        raw = np.stack([self.slots[s].raw[idx[:, s]] for s in range(NUM_SLOTS)], axis=1)
        return {"labels": labels, "dense": dense_raw, "cats": raw, "present": present,
                "p_true": p_true, "p_seen": p_seen}  # fmt: skip

    def write_hour(self, root: str, hour: int) -> str:
        """Writes partition ``hour`` (0-based from cfg.start); returns its directory."""
        part = self.hour(hour)
        path = partition_dir(root, self.cfg.start, hour)
        os.makedirs(path, exist_ok=True)
        buf = _format_criteo(part["labels"], part["dense"], part["cats"], part["present"])
        with open(os.path.join(path, "part-00000"), "wb") as f:
            f.write(buf.tobytes())
        np.savez(os.path.join(path, "truth.npz"), p_true=part["p_true"], p_seen=part["p_seen"])
        open(os.path.join(path, "_SUCCESS"), "w").close()
        return path


def partition_dir(root: str, start: str, hour: int) -> str:
    t = dt.datetime.strptime(start, "%Y%m%d") + dt.timedelta(hours=hour)
    return os.path.join(root, t.strftime("%Y%m%d"), t.strftime("%H"))


def generate(root: str, cfg: StreamConfig) -> list[str]:
    """Writes cfg.hours partitions under root, logging progress."""
    stream = SyntheticStream(cfg)
    t0 = time.perf_counter()
    out = []
    for h in range(cfg.hours):
        out.append(stream.write_hour(root, h))
        rate = (h + 1) * cfg.rows_per_hour / (time.perf_counter() - t0)
        log.info("generated hour %d/%d (%.0f rows/s)", h + 1, cfg.hours, rate)
    return out


def _prior_counts(ids: np.ndarray, present: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Sightings of each row's ID before that row (stream order); updates ``seen``."""
    n = len(ids)
    order = np.argsort(ids, kind="stable")
    s_ids = ids[order]
    s_present = present[order].astype(np.int64)
    # Running count of present occurrences within each ID's group, before this row.
    csum = np.cumsum(s_present) - s_present
    group_start = np.flatnonzero(np.r_[True, s_ids[1:] != s_ids[:-1]])
    starts = np.repeat(group_start, np.diff(np.r_[group_start, n]))
    before = csum - csum[starts]
    out = np.empty(n, np.int64)
    out[order] = before + seen[s_ids]
    np.add.at(seen, ids[present], 1)
    return out


@nb.njit(cache=True)
def _format_criteo(labels, dense, cats, present):
    n = labels.shape[0]
    out = np.empty(n * (2 + 13 * 12 + 26 * 9 + 1), np.uint8)
    p = 0
    hexd = np.array([48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 97, 98, 99, 100, 101, 102], np.uint8)
    digits = np.empty(20, np.uint8)
    for r in range(n):
        out[p] = 48 + labels[r]
        p += 1
        for j in range(13):
            out[p] = 9
            p += 1
            v = dense[r, j]
            k = 0
            while True:
                digits[k] = 48 + v % 10
                v //= 10
                k += 1
                if v == 0:
                    break
            for i in range(k - 1, -1, -1):
                out[p] = digits[i]
                p += 1
        for j in range(26):
            out[p] = 9
            p += 1
            if present[r, j]:
                v = cats[r, j]
                for i in range(7, -1, -1):
                    out[p] = hexd[(v >> (4 * i)) & 15]
                    p += 1
        out[p] = 10
        p += 1
    return out[:p]
