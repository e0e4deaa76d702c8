"""Value objects that describe a table: initializer, admission, eviction and the table.

They hold no state and execute nothing; :class:`hoststore.EmbeddingTable` runs them.
"""

from __future__ import annotations

import dataclasses
import json
import math

from hoststore import optimizers as optim


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
    ``pending_ttl`` clock ticks expires at the next shrink; when the counters are full,
    expired ones are dropped first and then new keys are rejected (counted) until room
    frees up.
    """

    kind: str = "always"
    p: float = 1.0
    n: int = 1
    threshold: float = 0.0
    nonclk_coeff: float = 0.1
    click_coeff: float = 1.0
    default_value: float = 0.0
    max_pending: int = 1 << 22
    pending_ttl: int = 2

    def __post_init__(self):
        if self.kind not in ("always", "probability", "count_filter", "show_click"):
            raise ValueError(f"unknown admission kind {self.kind!r}")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"admission probability must be in [0, 1], got {self.p}")
        if self.n < 1:
            raise ValueError(f"count_filter n must be >= 1, got {self.n}")
        if self.max_pending < 1 or self.pending_ttl < 1:
            raise ValueError("max_pending and pending_ttl must be >= 1")

    @property
    def uses_counters(self) -> bool:
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


@dataclasses.dataclass(frozen=True)
class Eviction:
    """How rows are forgotten (Paddle's "shrink"); every part is optional and they combine.

    - ``decay``: show and click are multiplied by ``decay`` per clock tick (applied lazily:
      a row stores its counts as of its last sighting, so ticking the clock is O(1) and does
      not dirty every row for the next delta snapshot).
    - ``unseen_ticks``: ``shrink()`` deletes rows not seen for that many ticks.
    - ``min_score``: ``shrink()`` deletes rows whose decayed score
      (show - click) * nonclk_coeff + click * click_coeff is below it.
    - ``max_rows``: ``shrink()`` then evicts the lowest-score rows (ties: least recently
      seen, then smallest key) until at most ``max_rows`` remain.
    """

    decay: float = 1.0
    unseen_ticks: int | None = None
    min_score: float | None = None
    max_rows: int | None = None
    nonclk_coeff: float = 0.1
    click_coeff: float = 1.0

    def __post_init__(self):
        if not 0.0 < self.decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {self.decay}")
        if self.unseen_ticks is not None and self.unseen_ticks < 1:
            raise ValueError("unseen_ticks must be >= 1")
        if self.max_rows is not None and self.max_rows < 0:
            raise ValueError("max_rows must be >= 0")


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
