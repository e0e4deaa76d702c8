"""Sparse optimizers: optax-shaped pairs of pure functions over blocks of rows.

Each factory returns a :class:`SparseOptimizer`. ``init(n_rows, dim)`` gives the optimizer
state of ``n_rows`` fresh rows (a NamedTuple of arrays whose leading axis is the row, as
optax names ``ScaleByAdamState(count, mu, nu)``; snapshots name their columns by its
fields), and
``update(grads, state, params, clock)`` returns new ``(params, state)`` without touching its
inputs. The table calls ``apply``, the compiled in-place form of the same update, on the
rows a push touched; ``update`` is ``apply`` on a copy, so there is one implementation of
each rule.

Example::

    opt = hoststore.optimizers.adagrad(learning_rate=0.05)
    state = opt.init(2, 4)
    params, state = opt.update(np.ones((2, 4), np.float32), state, np.zeros((2, 4), np.float32))

A learning rate may be a float or a schedule ``clock -> float`` (the table's stream clock).
All updates are lazy: rows that receive no gradient keep their weights and state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numba as nb
import numpy as np

Schedule = float | Callable[[int], float]
State = tuple[np.ndarray, ...]  # one of the NamedTuples below; arrays' leading axis is the row


class SgdState(NamedTuple):
    """SGD keeps no state."""


class AdagradState(NamedTuple):
    sum_of_squares: np.ndarray  # [n, dim] float32, optax's ScaleByRssState


class RowwiseAdagradState(NamedTuple):
    sum_of_squares: np.ndarray  # [n] float32: mean squared gradient summed, one per row


class AdamState(NamedTuple):
    mu: np.ndarray  # [n, dim] float32 first moment
    nu: np.ndarray  # [n, dim] float32 second moment
    count: np.ndarray  # [n] int32 updates of this row (lazy bias correction)


class FtrlState(NamedTuple):
    z: np.ndarray  # [n, dim] float32
    n: np.ndarray  # [n, dim] float32 sum of squared gradients


class SparseOptimizer(NamedTuple):
    """A sparse optimizer: ``init``/``update`` pure functions plus the compiled kernel."""

    name: str
    init: Callable[[int, int], State]
    # apply(params, state, grads, counts, hparams, lower, upper): in place on a block whose
    # row i receives grads[i]; the table gathers touched rows into blocks and scatters back.
    apply: Callable[..., None]
    hparams: Callable[[int], np.ndarray]
    # The factory and keyword arguments that rebuild this optimizer (configs travel as JSON
    # to remote shards).
    spec: dict | None = None

    def update(
        self,
        grads: np.ndarray,
        state: State,
        params: np.ndarray,
        clock: int = 0,
        counts: np.ndarray | None = None,
        bounds: tuple[float, float] = (-math.inf, math.inf),
    ) -> tuple[np.ndarray, State]:
        """Pure form: new (params, state) for a block of rows; inputs are left untouched.

        ``counts`` is the number of occurrences summed into each gradient row (only the
        show-scaled rowwise AdaGrad reads it).
        """
        params = np.array(params, dtype=np.float32, copy=True)
        named = type(self.init(0, params.shape[1]))
        state = named(*(np.array(s, copy=True) for s in state))
        grads = np.ascontiguousarray(grads, dtype=np.float32)
        if counts is None:
            counts = np.ones(params.shape[0], dtype=np.float32)
        self.apply(
            params,
            tuple(state),
            grads,
            np.asarray(counts, np.float32),
            self.hparams(clock),
            float(bounds[0]),
            float(bounds[1]),
        )
        return params, state

    def state_bytes_per_row(self, dim: int) -> int:
        return sum(s.nbytes for s in self.init(1, dim))


def _resolve(lr: Schedule, clock: int) -> float:
    return float(lr(clock)) if callable(lr) else float(lr)


@nb.njit(inline="always", cache=True)
def _clip(x, lo, hi):
    return min(max(x, lo), hi)


# --- sgd --------------------------------------------------------------------------------


@nb.njit(nogil=True, cache=True)
def _sgd_apply(params, state, grads, counts, hp, lo, hi):
    lr = np.float32(hp[0])
    lo, hi = np.float32(lo), np.float32(hi)
    for i in range(params.shape[0]):
        for j in range(params.shape[1]):
            params[i, j] = _clip(params[i, j] - lr * grads[i, j], lo, hi)


def sgd(learning_rate: Schedule) -> SparseOptimizer:
    """w <- w - lr * g."""
    return SparseOptimizer(
        "sgd",
        lambda n, dim: SgdState(),
        _sgd_apply,
        lambda clock: np.array([_resolve(learning_rate, clock)]),
        {"factory": "sgd", "learning_rate": learning_rate},
    )


# --- adagrad (per element) --------------------------------------------------------------


@nb.njit(nogil=True, cache=True)
def _adagrad_apply(params, state, grads, counts, hp, lo, hi):
    lr, eps = np.float32(hp[0]), np.float32(hp[1])
    lo, hi = np.float32(lo), np.float32(hi)
    acc = state[0]
    for i in range(params.shape[0]):
        for j in range(params.shape[1]):
            g = grads[i, j]
            a = acc[i, j] + g * g
            acc[i, j] = a
            step = lr * g / np.sqrt(a + eps) if a > 0 else np.float32(0.0)
            params[i, j] = _clip(params[i, j] - step, lo, hi)


def adagrad(
    learning_rate: Schedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> SparseOptimizer:
    """Per-element AdaGrad, optax's formula: a <- a + g^2; w <- w - lr * g / sqrt(a + eps)."""
    return SparseOptimizer(
        "adagrad",
        lambda n, dim: AdagradState(np.full((n, dim), initial_accumulator_value, np.float32)),
        _adagrad_apply,
        lambda clock: np.array([_resolve(learning_rate, clock), eps]),
        {
            "factory": "adagrad",
            "learning_rate": learning_rate,
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
        },
    )


# --- rowwise adagrad --------------------------------------------------------------------


@nb.njit(nogil=True, cache=True)
def _rowwise_adagrad_apply(params, state, grads, counts, hp, lo, hi):
    lr, eps, paddle, g0 = hp[0], hp[1], hp[2], hp[3]
    acc = state[0]
    dim = params.shape[1]
    for i in range(params.shape[0]):
        scale = counts[i] if paddle > 0 and counts[i] > 0 else 1.0
        sq = 0.0
        for j in range(dim):
            g = grads[i, j] / scale
            sq += g * g
        if paddle > 0:
            # Paddle's SparseAdaGradSGDRule: step with the old sum, then accumulate.
            step = lr * math.sqrt(g0 / (g0 + acc[i]))
            acc[i] += sq / dim
        else:
            acc[i] += sq / dim
            step = lr / (math.sqrt(acc[i]) + eps)
        for j in range(dim):
            params[i, j] = _clip(params[i, j] - step * grads[i, j] / scale, lo, hi)


def rowwise_adagrad(
    learning_rate: Schedule,
    initial_accumulator_value: float = 0.0,
    eps: float = 1e-8,
    paddle_style: bool = False,
    initial_g2sum: float = 3.0,
) -> SparseOptimizer:
    """One accumulator per row (4 bytes instead of 4 * dim).

    Default (TorchRec's rowwise AdaGrad): a <- a + mean(g^2); w <- w - lr * g / (sqrt(a) + eps).
    ``paddle_style=True`` is Paddle's sparse AdaGrad: g is first divided by the number of
    occurrences pushed (the show count), w <- w - lr * g * sqrt(g0 / (g0 + a)) with the old
    a, then a <- a + mean(g^2), where g0 = ``initial_g2sum``.
    """
    return SparseOptimizer(
        "rowwise_adagrad",
        lambda n, dim: RowwiseAdagradState(np.full(n, initial_accumulator_value, np.float32)),
        _rowwise_adagrad_apply,
        lambda clock: np.array(
            [_resolve(learning_rate, clock), eps, float(paddle_style), initial_g2sum]
        ),
        {
            "factory": "rowwise_adagrad",
            "learning_rate": learning_rate,
            "initial_accumulator_value": initial_accumulator_value,
            "eps": eps,
            "paddle_style": paddle_style,
            "initial_g2sum": initial_g2sum,
        },
    )


# --- lazy adam --------------------------------------------------------------------------


@nb.njit(nogil=True, cache=True)
def _adam_apply(params, state, grads, counts, hp, lo, hi):
    lr, b1, b2, eps = hp[0], hp[1], hp[2], hp[3]
    m, v, t = state[0], state[1], state[2]
    for i in range(params.shape[0]):
        t[i] += 1
        c1 = 1.0 - b1 ** t[i]
        c2 = 1.0 - b2 ** t[i]
        for j in range(params.shape[1]):
            g = grads[i, j]
            mj = b1 * m[i, j] + (1.0 - b1) * g
            vj = b2 * v[i, j] + (1.0 - b2) * g * g
            m[i, j] = mj
            v[i, j] = vj
            params[i, j] = _clip(params[i, j] - lr * (mj / c1) / (math.sqrt(vj / c2) + eps), lo, hi)


def adam(
    learning_rate: Schedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> SparseOptimizer:
    """Lazy Adam: moments and the bias-correction step count advance only for touched rows.

    Dense Adam (optax.adam) also decays the moments of rows with a zero gradient and keeps
    moving them by their momentum; lazy Adam leaves an untouched row exactly as it was, which
    is what a table of billions of mostly idle rows needs. On a row touched at every step the
    two are identical.
    """
    return SparseOptimizer(
        "adam",
        lambda n, dim: AdamState(
            np.zeros((n, dim), np.float32), np.zeros((n, dim), np.float32), np.zeros(n, np.int32)
        ),
        _adam_apply,
        lambda clock: np.array([_resolve(learning_rate, clock), b1, b2, eps]),
        {"factory": "adam", "learning_rate": learning_rate, "b1": b1, "b2": b2, "eps": eps},
    )


# --- ftrl -------------------------------------------------------------------------------


@nb.njit(nogil=True, cache=True)
def _ftrl_apply(params, state, grads, counts, hp, lo, hi):
    alpha, beta, l1, l2 = hp[0], hp[1], hp[2], hp[3]
    z, n = state[0], state[1]
    for i in range(params.shape[0]):
        for j in range(params.shape[1]):
            g = grads[i, j]
            n_old = n[i, j]
            n_new = n_old + g * g
            sigma = (math.sqrt(n_new) - math.sqrt(n_old)) / alpha
            zj = z[i, j] + g - sigma * params[i, j]
            z[i, j] = zj
            n[i, j] = n_new
            if abs(zj) <= l1:
                w = 0.0
            else:
                w = -(zj - math.copysign(l1, zj)) / ((beta + math.sqrt(n_new)) / alpha + l2)
            params[i, j] = _clip(w, lo, hi)


def ftrl(
    learning_rate: Schedule, beta: float = 1.0, l1: float = 0.0, l2: float = 0.0
) -> SparseOptimizer:
    """FTRL-Proximal per coordinate (McMahan et al. 2013, algorithm 1), alpha = lr.

    n <- n + g^2; z <- z + g - (sqrt(n) - sqrt(n_old)) / alpha * w;
    w <- 0 if |z| <= l1 else -(z - sign(z) l1) / ((beta + sqrt(n)) / alpha + l2).
    Weights are a function of (z, n), so the initial row is forgotten at the first update.
    """
    return SparseOptimizer(
        "ftrl",
        lambda n, dim: FtrlState(np.zeros((n, dim), np.float32), np.zeros((n, dim), np.float32)),
        _ftrl_apply,
        lambda clock: np.array([_resolve(learning_rate, clock), beta, l1, l2]),
        {"factory": "ftrl", "learning_rate": learning_rate, "beta": beta, "l1": l1, "l2": l2},
    )


def from_name(name: str, learning_rate: Schedule) -> SparseOptimizer:
    """An optimizer by name with default hyperparameters (for flags and configs)."""
    factories = {
        "sgd": sgd,
        "adagrad": adagrad,
        "rowwise_adagrad": rowwise_adagrad,
        "paddle_adagrad": lambda lr: rowwise_adagrad(lr, paddle_style=True),
        "adam": adam,
        "ftrl": ftrl,
    }
    if name not in factories:
        raise ValueError(f"unknown sparse optimizer {name!r}; choose from {sorted(factories)}")
    return factories[name](learning_rate)


def from_spec(spec: dict) -> SparseOptimizer:
    """The optimizer a ``SparseOptimizer.spec`` describes."""
    kw = dict(spec)
    factory = {"sgd": sgd, "adagrad": adagrad, "rowwise_adagrad": rowwise_adagrad,
               "adam": adam, "ftrl": ftrl}.get(kw.pop("factory", None))  # fmt: skip
    if factory is None:
        raise ValueError(f"unknown optimizer spec {spec!r}")
    return factory(**kw)
