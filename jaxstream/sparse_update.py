"""The store's sparse optimizers as pure jnp functions, for a pass's rows on the device.

In pass mode (:mod:`jaxstream.device_pass`) the rows of a pass live on the device and the
sparse optimizer runs inside the jitted step. Each rule here is the jnp form of the
store's compiled kernel of the same name (:mod:`hoststore.optimizers`), reading the same
hyperparameter vector (``SparseOptimizer.hparams(clock)``); the tests check each against
the store's own ``update``. The store computes some intermediates in float64, the device
in float32: equal to float tolerance, not bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp

# rule(weights [n, dim], state (tuple of [n, ...]), grads [n, dim], counts [n], hparams,
#      lower, upper) -> (weights, state)
Rule = Callable[..., tuple]


def _sgd(w, state, g, counts, hp, lo, hi):
    return jnp.clip(w - hp[0] * g, lo, hi), state


def _adagrad(w, state, g, counts, hp, lo, hi):
    lr, eps = hp[0], hp[1]
    acc = state[0] + g * g
    step = jnp.where(acc > 0, lr * g / jnp.sqrt(acc + eps), 0.0)
    return jnp.clip(w - step, lo, hi), (acc,)


def _rowwise_adagrad(w, state, g, counts, hp, lo, hi):
    lr, eps, paddle, g0 = hp[0], hp[1], hp[2], hp[3]
    scale = jnp.where((paddle > 0) & (counts > 0), counts, 1.0)[:, None]
    g = g / scale
    mean_sq = (g * g).sum(axis=1) / w.shape[1]
    old = state[0]
    new = old + mean_sq
    step = jnp.where(paddle > 0, lr * jnp.sqrt(g0 / (g0 + old)), lr / (jnp.sqrt(new) + eps))
    return jnp.clip(w - step[:, None] * g, lo, hi), (new,)


def _adam(w, state, g, counts, hp, lo, hi):
    lr, b1, b2, eps = hp[0], hp[1], hp[2], hp[3]
    m, v, t = state
    t = t + 1
    c1 = (1.0 - b1 ** t.astype(jnp.float32))[:, None]
    c2 = (1.0 - b2 ** t.astype(jnp.float32))[:, None]
    m = b1 * m + (1.0 - b1) * g
    v = b2 * v + (1.0 - b2) * g * g
    return jnp.clip(w - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), lo, hi), (m, v, t)


def _ftrl(w, state, g, counts, hp, lo, hi):
    alpha, beta, l1, l2 = hp[0], hp[1], hp[2], hp[3]
    z, n = state
    n_new = n + g * g
    sigma = (jnp.sqrt(n_new) - jnp.sqrt(n)) / alpha
    z = z + g - sigma * w
    w = jnp.where(jnp.abs(z) <= l1, 0.0,
                  -(z - jnp.sign(z) * l1) / ((beta + jnp.sqrt(n_new)) / alpha + l2))  # fmt: skip
    return jnp.clip(w, lo, hi), (z, n_new)


_RULES: dict[str, Rule] = {
    "sgd": _sgd,
    "adagrad": _adagrad,
    "rowwise_adagrad": _rowwise_adagrad,
    "adam": _adam,
    "ftrl": _ftrl,
}


def rule_of(name: str) -> Rule:
    """The jnp rule of the store optimizer named ``name`` (``SparseOptimizer.name``)."""
    if name not in _RULES:
        raise ValueError(f"no device form of the sparse optimizer {name!r}; have {sorted(_RULES)}")
    return _RULES[name]
