"""Each device rule equals the store's compiled optimizer of the same name (to float
tolerance), over several successive updates, with and without weight bounds."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hoststore import optimizers as opt
from jaxstream.sparse_update import rule_of

OPTIMIZERS = {
    "sgd": opt.sgd(0.3),
    "adagrad": opt.adagrad(0.1),
    "rowwise_adagrad": opt.rowwise_adagrad(0.2, initial_accumulator_value=0.1),
    "paddle_adagrad": opt.rowwise_adagrad(0.2, paddle_style=True),
    "adam": opt.adam(0.05),
    "ftrl": opt.ftrl(0.1, l1=0.05, l2=0.01),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("bounds", [(-np.inf, np.inf), (-0.3, 0.3)])
def test_device_rule_matches_the_store_kernel(name, bounds):
    o = OPTIMIZERS[name]
    rng = np.random.default_rng(len(name))
    n, dim = 64, 5
    w_ref = rng.normal(0, 0.2, (n, dim)).astype(np.float32)
    s_ref = o.init(n, dim)
    w_dev, s_dev = jnp.asarray(w_ref), tuple(jnp.asarray(x) for x in s_ref)
    rule = jax.jit(rule_of(o.name))
    for step in range(4):
        g = rng.normal(0, 1, (n, dim)).astype(np.float32)
        g[: n // 8] = 0.0  # rows with a zero gradient
        counts = rng.integers(1, 5, n).astype(np.float32)
        w_ref, s_ref = o.update(g, s_ref, w_ref, 0, counts, bounds)
        w_dev, s_dev = rule(w_dev, s_dev, g, counts, jnp.asarray(o.hparams(0), jnp.float32),
                            *bounds)  # fmt: skip
        np.testing.assert_allclose(np.asarray(w_dev), w_ref, rtol=2e-5, atol=2e-6,
                                   err_msg=f"{name} weights, update {step}")  # fmt: skip
        for a, b in zip(s_dev, s_ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), b, rtol=2e-5, atol=2e-6,
                                       err_msg=f"{name} state, update {step}")  # fmt: skip
    if bounds[1] < np.inf:
        assert np.abs(np.asarray(w_dev)).max() <= bounds[1] + 1e-7


def test_an_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="no device form of the sparse optimizer 'lamb'"):
        rule_of("lamb")
