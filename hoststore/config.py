"""Value objects that describe a table: its initializer and the table itself.

They hold no state and execute nothing; :class:`hoststore.EmbeddingTable` runs them. The
admission and eviction policies live in :mod:`hoststore.admission` and
:mod:`hoststore.eviction`, the update rules in :mod:`hoststore.optimizers`.
"""

from __future__ import annotations

import dataclasses
import json
import math

from hoststore import optimizers as optim
from hoststore.admission import Admission
from hoststore.eviction import Eviction


@dataclasses.dataclass(frozen=True)
class Initializer:
    """Initial row of a new key: a deterministic function of (table seed, key).

    kind: "zeros", "uniform" (in [-scale, scale)) or "normal" (stddev = scale).
    """

    kind: str = "uniform"
    scale: float = 0.01

    def __post_init__(self):
        if self.kind not in ("zeros", "uniform", "normal"):
            raise ValueError(f"unknown initializer kind {self.kind!r}")


def zeros() -> Initializer:
    return Initializer("zeros", 0.0)


def uniform(scale: float = 0.01) -> Initializer:
    return Initializer("uniform", scale)


def normal(stddev: float = 0.01) -> Initializer:
    return Initializer("normal", stddev)


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """Everything that defines one embedding table."""

    name: str
    dim: int
    optimizer: optim.SparseOptimizer = dataclasses.field(
        default_factory=lambda: optim.adagrad(0.05)
    )
    initializer: Initializer = dataclasses.field(default_factory=Initializer)
    admission: Admission = dataclasses.field(default_factory=Admission)
    eviction: Eviction = dataclasses.field(default_factory=Eviction)
    seed: int = 0
    weight_bounds: tuple[float, float] = (-math.inf, math.inf)
    initial_capacity: int = 1024

    def __post_init__(self):
        if not self.name:
            raise ValueError("table name must be non-empty")
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if self.weight_bounds[0] > self.weight_bounds[1]:
            raise ValueError(f"weight_bounds must be (low, high), got {self.weight_bounds}")


def config_to_json(cfg: TableConfig) -> str:
    """A TableConfig as JSON (to create the table on remote shards)."""
    spec = cfg.optimizer.spec
    if spec is None or callable(spec.get("learning_rate")):
        raise ValueError(
            f"table {cfg.name!r}: only optimizers built by hoststore.optimizers with a constant "
            "learning rate can be sent to a remote store (schedules are Python callables)"
        )
    d = dataclasses.asdict(dataclasses.replace(cfg, optimizer=None))
    d["optimizer"] = spec
    return json.dumps(d, sort_keys=True)


def config_from_json(text: str) -> TableConfig:
    try:
        d = json.loads(text)
        return TableConfig(
            name=d["name"], dim=int(d["dim"]), optimizer=optim.from_spec(d["optimizer"]),
            initializer=Initializer(**d["initializer"]), admission=Admission(**d["admission"]),
            eviction=Eviction(**d["eviction"]), seed=int(d["seed"]),
            weight_bounds=tuple(d["weight_bounds"]), initial_capacity=int(d["initial_capacity"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad table config JSON: {e!r}") from None
