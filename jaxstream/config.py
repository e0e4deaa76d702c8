"""Training configuration: one frozen dataclass, a default and a tiny smoke variant."""

from __future__ import annotations

import dataclasses

from jaxstream.data.synthetic import StreamConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # --- data
    data_root: str | None = None  # None: generate a synthetic stream under workdir/data
    format: str = "criteo"  # criteo | avazu | slot
    slot_names: tuple[str, ...] = ()  # for format=slot: the slot numbers to read
    slot_max_len: int = 8
    synthetic: StreamConfig = StreamConfig(hours=12, rows_per_hour=20_000)
    pattern: str = r"(?P<day>\d{8})/(?P<hour>\d{2})"
    max_partitions: int | None = None
    wait: bool = False
    poll_seconds: float = 5.0
    idle_timeout_seconds: float = 600.0
    # --- model and optimizers
    model: str = "dnn"
    hidden: tuple[int, ...] = (400, 400, 400)
    embedding_dim: int = 8
    batch_size: int = 1024
    dense_optimizer: str = "adam"  # any optax alias taking learning_rate
    dense_learning_rate: float = 1e-3
    sparse_optimizer: str = "adagrad"
    sparse_learning_rate: float = 0.05
    initializer_scale: float = 0.01
    # Paddle's CVM: feed each ID's store counters, log(show+1) and log(click+1)-log(show+1),
    # to the model beside its embedding.
    cvm: bool = False
    # --- store policies: "always", "count_filter:3", "probability:0.2", "show_click:2.5"
    admission: str = "always"
    # comma-separated: "unseen:72,score:0.5,max_rows:1000000,decay:0.98" (ticks = partitions)
    eviction: str = ""
    shrink_every: str = "day"  # day | partition | never
    store_shards: int = 1  # in-process shards per table; >1 pulls/pushes them in parallel
    # Rows each table's index is sized for up front. Beyond it the index grows by 1.5x (a
    # rebuild under the table's lock; the rows themselves grow in place, without a copy);
    # sizing it for the expected rows avoids the rebuilds.
    table_capacity: int = 1024
    # --- checkpoints: one per partition; a base at the first hour of each day, else deltas
    checkpoint: bool = True
    keep_bases: int = 2
    # --- pipeline, metrics, bookkeeping
    staleness: int = 1
    metrics_file: str | None = None  # default: workdir/metrics.jsonl
    tensorboard: bool = False
    progress: bool = True
    seed: int = 0


def get_config() -> TrainConfig:
    """The embedded default: 30 generated hours (a day boundary, so one shrink) with
    admission and eviction on; trains in well under two minutes on 2 CPU cores."""
    return TrainConfig(
        synthetic=StreamConfig(hours=30, rows_per_hour=20_000),
        admission="count_filter:2",
        eviction="unseen:24",
    )


def smoke_config() -> TrainConfig:
    """Seconds on a CPU: for tests and --smoke."""
    return TrainConfig(
        synthetic=StreamConfig(hours=3, rows_per_hour=2_000, max_vocab=5_000),
        hidden=(32, 16),
        batch_size=256,
        progress=False,
    )
