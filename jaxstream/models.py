"""CTR models in Flax NNX. Every model maps (pooled embeddings, dense features) -> logits.

The contract, which custom models follow too::

    model(embeddings: list[jax.Array], dense: jax.Array) -> jax.Array
      embeddings[s]: [B, dim_s] pooled embedding of slot s, in FeatureSpec order
      dense:         [B, num_dense]
      returns:       [B] logits

Models are built by name through :func:`build` (``MODELS`` maps names to constructors with
the signature ``(slot_dims, num_dense, rngs, **options)``); add yours to ``MODELS`` or
pass an instance to the trainer directly.

With Paddle's CVM (``count_columns`` = 2) each slot's input starts with its ID's count
features, log(show + 1) and log(click + 1) - log(show + 1): constants that grow with the
stream (about 14 for an ID shown a million times). Linear and MLP parts take them as they
are, as Paddle's DNNs do; the interactions (FM, DLRM's dot products, DCN's crosses) take
the embeddings without them: products of counts are not learnable and saturated the logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

# Flax >= 0.12 wants sub-module lists wrapped in nnx.List; older releases take plain lists.
_List = getattr(nnx, "List", list)


class MLP(nnx.Module):
    def __init__(self, sizes: Sequence[int], rngs: nnx.Rngs):
        self.layers = _List(
            [nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        )

    def __call__(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class Linear(nnx.Module):
    """The wide/LR part: a weight per embedding coordinate and per dense feature."""

    def __init__(self, slot_dims, num_dense, rngs):
        self.proj = nnx.Linear(sum(slot_dims) + num_dense, 1, rngs=rngs)

    def __call__(self, embeddings, dense):
        return self.proj(jnp.concatenate([*embeddings, dense], axis=-1))[:, 0]


class LR(nnx.Module):
    def __init__(self, slot_dims, num_dense, rngs, **_):
        self.linear = Linear(slot_dims, num_dense, rngs)

    def __call__(self, embeddings, dense):
        return self.linear(embeddings, dense)


class DNN(nnx.Module):
    """Paddle's CTR DNN: concatenated embeddings and dense features through an MLP."""

    def __init__(self, slot_dims, num_dense, rngs, hidden=(400, 400, 400), **_):
        self.mlp = MLP([sum(slot_dims) + num_dense, *hidden, 1], rngs)

    def __call__(self, embeddings, dense):
        return self.mlp(jnp.concatenate([*embeddings, dense], axis=-1))[:, 0]


class WideDeep(nnx.Module):
    def __init__(self, slot_dims, num_dense, rngs, hidden=(400, 400, 400), **_):
        self.wide = Linear(slot_dims, num_dense, rngs)
        self.deep = DNN(slot_dims, num_dense, rngs, hidden)

    def __call__(self, embeddings, dense):
        return self.wide(embeddings, dense) + self.deep(embeddings, dense)


def _split(embeddings, count_columns: int):
    """(each slot's embedding without its count features, all slots' count features)."""
    c = count_columns
    return [e[:, c:] for e in embeddings], [e[:, :c] for e in embeddings if c]


def _stack(embeddings):
    dims = {e.shape[-1] for e in embeddings}
    if len(dims) != 1:
        raise ValueError(f"this model needs one embedding dim for every slot, got {dims}")
    return jnp.stack(embeddings, axis=1)  # [B, S, d]


class DeepFM(nnx.Module):
    def __init__(self, slot_dims, num_dense, rngs, hidden=(400, 400, 400), count_columns=0, **_):
        self.linear = Linear(slot_dims, num_dense, rngs)
        self.deep = DNN(slot_dims, num_dense, rngs, hidden)
        self.count_columns = count_columns

    def __call__(self, embeddings, dense):
        v = _stack(_split(embeddings, self.count_columns)[0])
        fm = 0.5 * (jnp.sum(v, 1) ** 2 - jnp.sum(v**2, 1)).sum(-1)
        return self.linear(embeddings, dense) + fm + self.deep(embeddings, dense)


class DCNv2(nnx.Module):
    """DCN-v2: full-rank cross layers x_{l+1} = x0 * (W x_l + b) + x_l, stacked with a DNN."""

    def __init__(self, slot_dims, num_dense, rngs, hidden=(400, 400, 400), cross_layers=3,
                 count_columns=0, **_):  # fmt: skip
        d = sum(slot_dims) + num_dense
        crossed = d - count_columns * len(slot_dims)  # the counts skip the cross layers
        self.cross = _List([nnx.Linear(crossed, crossed, rngs=rngs) for _ in range(cross_layers)])
        self.deep = MLP([d, *hidden], rngs)
        self.head = nnx.Linear(crossed + hidden[-1], 1, rngs=rngs)
        self.count_columns = count_columns

    def __call__(self, embeddings, dense):
        embs, counts = _split(embeddings, self.count_columns)
        x0 = jnp.concatenate([*embs, dense], axis=-1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        h = jax.nn.relu(self.deep(jnp.concatenate([*counts, *embs, dense], axis=-1)))
        return self.head(jnp.concatenate([x, h], axis=-1))[:, 0]


class DLRM(nnx.Module):
    """DLRM: bottom MLP on dense features, pairwise dot interactions, top MLP."""

    def __init__(self, slot_dims, num_dense, rngs, hidden=(400, 400, 400), bottom=(64,),
                 count_columns=0, **_):  # fmt: skip
        d = slot_dims[0] - count_columns
        self.bottom = MLP([max(num_dense, 1), *bottom, d], rngs)
        n = len(slot_dims) + 1
        # The top MLP takes the counts beside the dot products (they skip the interactions).
        self.top = MLP([d + n * (n - 1) // 2 + count_columns * len(slot_dims), *hidden, 1], rngs)
        self.num_dense, self.count_columns = num_dense, count_columns

    def __call__(self, embeddings, dense):
        if self.num_dense == 0:
            dense = jnp.zeros((dense.shape[0], 1), dense.dtype)
        embs, counts = _split(embeddings, self.count_columns)
        b = jax.nn.relu(self.bottom(dense))
        v = _stack([b, *embs])
        dots = jnp.einsum("bsd,btd->bst", v, v)
        i, j = jnp.triu_indices(v.shape[1], k=1)
        return self.top(jnp.concatenate([b, dots[:, i, j], *counts], axis=-1))[:, 0]


MODELS = {
    "lr": LR,
    "dnn": DNN,
    "wide_deep": WideDeep,
    "deepfm": DeepFM,
    "dcn_v2": DCNv2,
    "dlrm": DLRM,
}


def build(name: str, slot_dims: Sequence[int], num_dense: int, seed: int = 0, **options):
    """``options``: the model's own (``hidden``, ...) and ``count_columns``, the count
    features that start each slot's input (``FeatureSpec.count_columns``: 2 with CVM)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return MODELS[name](list(slot_dims), num_dense, nnx.Rngs(seed), **options)
