"""A synthetic, drifting click stream with a known ground truth, in Criteo format.

Each of 26 slots has a vocabulary of IDs with power-law popularity. IDs are born and fade
over the hours (a share of them lives forever), so a model must keep learning new IDs and
can forget old ones. The true click probability is

    logit = bias + sum_s w_s[id_s] + sum_(a,b) <v_a[id_a], v_b[id_b]> + beta . log1p(dense)

Partitions are written as ``ROOT/YYYYMMDD/HH/part-00000`` with a ``_SUCCESS`` marker and a
``truth.npz`` holding, per line, the true probability and two ceilings:

- ``p_seen``, the "seen-k ceiling": the true model with the terms of IDs seen fewer than k
  times before left out, and every other ID's weight known exactly. No learner reaches it:
  k click labels say little about one weight.
- ``p_bayes``, the "Bayes ceiling": each ID's weight replaced by the posterior mean of an
  ideal Bayesian learner that has seen the ID's earlier rows, given generous help: it knows
  the model's form, each slot's prior N(0, sigma^2) and every other term of those rows
  exactly, so each past label is a logistic observation of w alone. The posterior is
  computed exactly on a grid of the prior (``BAYES_GRID`` points over +-4.5 sigma).
  Pairwise and dense terms are kept as in the seen-k ceiling. A learner of the per-ID
  weights with less help should not expect a better AUC.

:class:`GridBayesLearner` is that learner; with ``plug_in=True`` it is an honest one (told
only an offset and the priors); ``experiments/bayes_references.py`` measures both kinds.
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
BAYES_GRID = 32


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
    std: float  # prior standard deviation of w


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
                    std,
                )
            )
        self.pairs = [tuple(rng.choice(NUM_SLOTS, 2, replace=False)) for _ in range(cfg.num_pairs)]
        self.beta = rng.normal(0, cfg.dense_weight, NUM_DENSE)
        self.dense_scale = rng.uniform(0.5, 4.0, NUM_DENSE)
        self.bias = 0.0
        self.bias = self._calibrate_bias()
        self._bayes = GridBayesLearner(self.slots)

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
        part = self._hour_parts(hour)
        labels, present = part["labels"], part["present"]
        known_terms = (part["terms"] * part["known"]).sum(1)
        w_hat = self._bayes.step(part["idx"], present, part["id_free_logit"], labels)
        p_bayes = _sigmoid(part["kept"] - known_terms + w_hat)
        raw = np.stack([self.slots[s].raw[part["idx"][:, s]] for s in range(NUM_SLOTS)], axis=1)
        return {"labels": labels, "dense": part["dense"], "cats": raw, "present": present,
                "p_true": _sigmoid(part["logit"]), "p_seen": _sigmoid(part["kept"]),
                "p_bayes": p_bayes}  # fmt: skip

    def _hour_parts(self, hour: int) -> dict[str, np.ndarray]:
        """One hour's sample and its logit split into terms (all including the bias):
        ``logit``, the true one; ``kept``, the seen-k ceiling's; ``id_free_logit``, the
        true logit without the per-ID terms; ``dense_logit``, bias and dense term only."""
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, hour])
        idx, present, dense_raw, z, terms, pair_terms, dense_term, prior = self._sample(
            hour, cfg.rows_per_hour, rng, count=True
        )
        logit = self.bias + z
        known = prior >= cfg.seen_k
        kept = self.bias + (terms * known).sum(1) + dense_term
        for j, (a, b) in enumerate(self.pairs):
            kept += pair_terms[:, j] * known[:, a] * known[:, b]
        labels = (rng.random(len(logit)) < _sigmoid(logit)).astype(np.int64)
        return {"idx": idx, "present": present, "dense": dense_raw, "labels": labels,
                "terms": terms, "known": known, "logit": logit, "kept": kept,
                "id_free_logit": logit - terms.sum(1),
                "dense_logit": self.bias + dense_term}  # fmt: skip

    def write_hour(self, root: str, hour: int) -> str:
        """Writes partition ``hour`` (0-based from cfg.start); returns its directory."""
        part = self.hour(hour)
        path = partition_dir(root, self.cfg.start, hour)
        os.makedirs(path, exist_ok=True)
        buf = _format_criteo(part["labels"], part["dense"], part["cats"], part["present"])
        with open(os.path.join(path, "part-00000"), "wb") as f:
            f.write(buf.tobytes())
        truth = {k: part[k] for k in ("p_true", "p_seen", "p_bayes")}
        np.savez(os.path.join(path, "truth.npz"), **truth)
        open(os.path.join(path, "_SUCCESS"), "w").close()
        return path


class GridBayesLearner:
    """Online Bayesian learner of the per-ID weights, exact on a grid of each slot's prior.

    Per row (stream order) and present ID: the posterior mean of the ID's weight from the
    labels of its earlier rows; then the row's label enters the ID's likelihood as a
    logistic observation ``label ~ Bernoulli(sigmoid(rest + w))``. ``rest`` is the row's
    logit minus this ID's term: with ``plug_in=False`` the true one (every other term known
    exactly: the generous Bayes ceiling), with ``plug_in=True`` the given offset plus the
    other IDs' current posterior means (a learner that only knows the offset and the
    priors)."""

    def __init__(self, slots: list[_Slot], plug_in: bool = False):
        sizes = [len(slot.w) for slot in slots]
        self.plug_in = plug_in
        self._gid_offset = np.r_[0, np.cumsum(sizes)[:-1]].astype(np.int64)
        self._row_of = np.full(sum(sizes), -1, np.int32)
        self._true_w = np.concatenate([slot.w for slot in slots])
        self._loglik = np.zeros((0, BAYES_GRID), np.float32)
        self._used = 0
        unit = np.linspace(-4.5, 4.5, BAYES_GRID)
        self._grid = np.stack([unit * slot.std for slot in slots]).astype(np.float32)
        self._logprior = np.broadcast_to(-(unit**2) / 2, self._grid.shape).astype(np.float32)

    def step(self, idx, present, offsets, labels) -> np.ndarray:
        """Per row, the sum over its IDs of their posterior mean weights before the row;
        then learns from the rows. ``offsets``: the logit without the per-ID terms (exact
        for the generous learner; what the learner is told, for the plug-in one)."""
        need = self._used + idx.size
        if need > len(self._loglik):
            grown = np.zeros((max(need, 2 * len(self._loglik)), BAYES_GRID), np.float32)
            grown[: self._used] = self._loglik[: self._used]
            self._loglik = grown
        out, self._used = _bayes_pass(
            idx + self._gid_offset[None, :], present, offsets, labels, self._true_w,
            self._row_of, self._loglik, self._used, self._grid, self._logprior, self.plug_in,
        )  # fmt: skip
        return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


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
def _bayes_pass(gids, present, offsets, labels, true_w, row_of, loglik, used, grid, logprior,
                plug_in):  # fmt: skip
    """:meth:`GridBayesLearner.step` over rows in stream order; returns (sums of posterior
    means per row, entries used). ``gids`` are global IDs (slot offset added)."""
    n, slots = gids.shape
    g = grid.shape[1]
    out = np.zeros(n)
    post = np.empty(g)
    rows = np.empty(slots, np.int64)
    means = np.zeros(slots)
    for r in range(n):
        true_logit = offsets[r]
        for s in range(slots):
            means[s] = 0.0
            if not present[r, s]:
                continue
            gid = gids[r, s]
            true_logit += true_w[gid]
            k = row_of[gid]
            if k < 0:
                k = used
                row_of[gid] = k
                used += 1
            rows[s] = k
            m = -np.inf
            for j in range(g):
                post[j] = loglik[k, j] + logprior[s, j]
                m = max(m, post[j])
            num = 0.0
            den = 0.0
            for j in range(g):
                e = np.exp(post[j] - m)
                num += e * grid[s, j]
                den += e
            means[s] = num / den
            out[r] += means[s]
        sign = 1.0 if labels[r] else -1.0
        for s in range(slots):
            if not present[r, s]:
                continue
            if plug_in:
                rest = offsets[r] + out[r] - means[s]
            else:
                rest = true_logit - true_w[gids[r, s]]
            k = rows[s]
            for j in range(g):  # += log sigmoid(sign * (rest + w_j)), computed stably
                x = sign * (rest + grid[s, j])
                loglik[k, j] += -np.log1p(np.exp(-x)) if x > 0 else x - np.log1p(np.exp(x))
    return out, used


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
