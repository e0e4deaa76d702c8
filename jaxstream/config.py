"""Training configuration: one frozen dataclass, a default and a tiny smoke variant."""

from __future__ import annotations

import dataclasses

from jaxstream.data.synthetic import StreamConfig
from jaxstream.stream import DEFAULT_PATTERN


def _field(default, help: str):  # noqa: A002 - the flag's help text
    """A config field with the help text its command-line flag shows."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a streaming run needs. ``experiments/train_stream.py`` makes every field a
    flag of the same name (``--synthetic.hours`` for nested ones), default shown."""

    # --- data
    data_root: str | None = _field(None, "Stream root ROOT/YYYYMMDD/HH/; unset: generate one.")
    format: str = _field(
        "criteo",
        "Input format: criteo | avazu | slot (Paddle feasign:slot) "
        "| paddlerec (PaddleRec name:value).",
    )
    slot_names: tuple[str, ...] = _field(
        (),
        "For format=slot/paddlerec: the slot numbers to "
        "read (other slots' tokens are skipped, counted).",
    )
    num_dense: int = _field(13, "For format=paddlerec: dense_feature values per line.")
    slot_max_len: int = _field(
        8,
        "For format=slot: IDs kept per example and slot (the rest "
        "are counted as ids_over_max_len).",
    )
    slot_pooling: str = _field("sum", "For format=slot: how a slot's IDs pool: sum | mean.")
    synthetic: StreamConfig = _field(StreamConfig(hours=12, rows_per_hour=20_000),
                                     "The generated stream (without data_root).")  # fmt: skip
    pattern: str = _field(DEFAULT_PATTERN, "Partition path regex (groups day, hour, minute).")
    split_interval_minutes: int = _field(
        60,
        "Spacing of partitions (Paddle's split_interval): "
        "60 for ROOT/YYYYMMDD/HH, e.g. 30 for HHMM splits.",
    )
    max_partitions: int | None = _field(None, "Stop after this many partitions.")
    wait: bool = _field(False, "Keep polling for new partitions.")
    poll_seconds: float = _field(5.0, "With wait: seconds between polls.")
    idle_timeout_seconds: float = _field(600.0, "With wait: stop after this long idle.")
    gap_wait_seconds: float = _field(
        600.0,
        "With wait: how long a missing partition is waited "
        "for while later ones are ready (then it is skipped, "
        "reported, and still trained if it arrives).",
    )
    max_malformed_fraction: float = _field(
        0.05,
        "A partition with more malformed lines than this stops the run (nothing of it committed).",
    )
    # --- model and optimizers
    model: str = _field("dnn", "lr | dnn | wide_deep | deepfm | dcn_v2 | dlrm.")
    hidden: tuple[int, ...] = _field((400, 400, 400), "Hidden layer sizes of the tower.")
    embedding_dim: int = _field(8, "Embedding dimension of every slot.")
    batch_size: int = _field(1024, "Examples per step.")
    dense_optimizer: str = _field("adam", "Any optax alias taking learning_rate.")
    dense_learning_rate: float = _field(1e-3, "Dense learning rate.")
    sparse_optimizer: str = _field(
        "adagrad", "sgd | adagrad | rowwise_adagrad | paddle_adagrad | adam | ftrl."
    )
    sparse_learning_rate: float = _field(0.05, "Sparse (store) learning rate.")
    initializer_scale: float = _field(0.01, "New rows are uniform in +-this.")
    cvm: bool = _field(False, "Feed each ID's show/click counters to the model (Paddle's CVM).")
    devices: int = _field(0, "Local devices the step runs on, data parallel (0: all; fewer "
                          "when they do not divide batch_size).")  # fmt: skip
    # --- store policies
    admission: str = _field(
        "always", "always | probability:P | count_filter:N | show_click:T (Paddle's entry)."
    )
    pending_ttl: int = _field(168, "Ticks (partitions) a pending key's counter outlives its "
                              "last sighting: a week of hourly partitions.")  # fmt: skip
    eviction: str = _field(
        "",
        "Comma-separated unseen:N,score:S,max_rows:N,shrink_decay:R,decay:D "
        "(ticks = partitions; unseen:N deletes rows unseen for more than N).",
    )
    shrink_every: str = _field("day", "When to evict: day | partition | never.")
    store_shards: int = _field(1, "In-process shards per table (pulled and pushed in parallel).")
    # Beyond it the index grows by 1.5x (a rebuild under the table's lock; the rows grow in
    # place, without a copy); sizing it for the expected rows avoids the rebuilds.
    table_capacity: int = _field(1024, "Rows each table reserves up front.")
    # The disk tier (hoststore.DiskTier): same results, less RAM; rows faulted back on use.
    store_memory_mb: float = _field(0.0, "RAM for each table's rows (0: all rows in RAM); "
                                    "the rest go to --store_disk_dir.")  # fmt: skip
    store_disk_dir: str = _field("", "Local directory for the rows beyond "
                                 "--store_memory_mb (scratch: the checkpoint is the "
                                 "durable copy).")  # fmt: skip
    # --- checkpoints: one per partition; a base at the first hour of each day, else deltas
    checkpoint: bool = _field(True, "Checkpoint every partition and resume from the workdir.")
    keep_bases: int = _field(2, "Bases kept (with their deltas).")
    # --- pipeline, metrics, bookkeeping
    staleness: int = _field(1, "Pulls may run this many batches ahead of pushes.")
    # Pass mode (jaxstream.device_pass, Paddle's GPU-PS BuildPass/EndPass): no pull, push
    # or row transfer per batch; the results of staleness 0, to float tolerance.
    pass_batches: int = _field(0, "0: pull and push every batch. N: train in passes of N "
                               "batches whose rows stay on the devices, the sparse "
                               "optimizer inside the step (one trainer process).")  # fmt: skip
    batch_threads: int = _field(0, "Threads building (deduplicating) batches; 0: one per "
                                "core this process may use while evaluating, one less "
                                "while training, 1 to 4.")  # fmt: skip
    read_threads: int = _field(0, "Threads parsing a partition's Criteo or Avazu files; "
                               "0: one per core this process may use, at most 8.")  # fmt: skip
    keep_batches_mb: int = _field(256, "Memory the evaluation pass may keep of a "
                                  "partition's batches for its training pass to reuse "
                                  "(those past it are built again; 0: all are).")  # fmt: skip
    metrics_file: str | None = _field(None, "JSONL metrics path; unset: workdir/metrics.jsonl.")
    tensorboard: bool = _field(False, "Also write TensorBoard scalars.")
    dump_predictions: bool = _field(False, "Paddle's dump_fields: write each example's file, "
                                    "line, label and progressive prediction to "
                                    "workdir/predictions/<partition>.tsv.")  # fmt: skip
    progress: bool = _field(True, "A progress bar on a terminal.")
    seed: int = _field(0, "Seed of the model and the tables.")


# The groups ``--help`` shows the fields in (nested fields go with their parent).
FIELD_GROUPS: dict[str, tuple[str, ...]] = {
    "data": ("data_root", "format", "slot_names", "num_dense", "slot_max_len", "slot_pooling",
             "synthetic", "pattern", "split_interval_minutes", "max_partitions", "wait",
             "poll_seconds", "idle_timeout_seconds", "gap_wait_seconds",
             "max_malformed_fraction"),
    "model": ("model", "hidden", "embedding_dim", "batch_size", "dense_optimizer",
              "dense_learning_rate", "sparse_optimizer", "sparse_learning_rate",
              "initializer_scale", "cvm", "devices", "seed"),
    "store": ("admission", "pending_ttl", "eviction", "shrink_every", "store_shards",
              "table_capacity", "store_memory_mb", "store_disk_dir"),
    "checkpoints": ("checkpoint", "keep_bases"),
    "pipeline and outputs": ("staleness", "pass_batches", "batch_threads", "read_threads",
                             "keep_batches_mb", "metrics_file", "tensorboard",
                             "dump_predictions", "progress"),
}  # fmt: skip


def disk_tier(cfg: TrainConfig):
    """The in-process store's disk tier (a hoststore.DiskTier), or None."""
    import hoststore as hs

    if not cfg.store_memory_mb:
        return None
    return hs.DiskTier(cfg.store_disk_dir, memory_mb=cfg.store_memory_mb)


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


CHOICES = {
    "format": ("criteo", "avazu", "slot", "paddlerec"),
    "shrink_every": ("day", "partition", "never"),
    "slot_pooling": ("sum", "mean"),
}
POSITIVE = ("batch_size", "embedding_dim", "store_shards", "table_capacity", "keep_bases",
            "slot_max_len", "split_interval_minutes", "pending_ttl")  # fmt: skip


def check(cfg: TrainConfig) -> None:
    """Every field that can be checked without data, before any work: a ValueError whose
    message starts with ``--field=value:`` and says what is allowed."""
    import optax

    import hoststore as hs
    from jaxstream import models

    def bad(field, why):
        raise ValueError(f"--{field}={getattr(cfg, field)}: {why}")

    for field, allowed in CHOICES.items():
        if getattr(cfg, field) not in allowed:
            bad(field, f"choose from {', '.join(allowed)}")
    for field in POSITIVE:
        if getattr(cfg, field) < 1:
            bad(field, "must be >= 1")
    if cfg.staleness < 0:
        bad("staleness", "must be >= 0")
    if cfg.max_partitions is not None and cfg.max_partitions < 1:
        bad("max_partitions", "must be >= 1 (unset: no limit)")
    if cfg.pass_batches < 0:
        bad("pass_batches", "must be >= 0 (0: pull and push every batch)")
    if cfg.keep_batches_mb < 0:
        bad("keep_batches_mb", "must be >= 0 (0: each pass builds its batches)")
    if cfg.read_threads < 0:
        bad("read_threads", "must be >= 0 (0: one per core, at most 8)")
    if cfg.batch_threads < 0:
        bad("batch_threads", "must be >= 0 (0: one per core, one less while training, 1 to 4)")
    if cfg.devices < 0:
        bad("devices", "must be >= 0 (0: all local devices)")
    if not 0.0 <= cfg.max_malformed_fraction <= 1.0:
        bad("max_malformed_fraction", "must be in [0, 1]")
    if cfg.store_memory_mb < 0:
        bad("store_memory_mb", "must be >= 0 (0: every row in RAM)")
    if bool(cfg.store_memory_mb) != bool(cfg.store_disk_dir):
        bad("store_memory_mb" if cfg.store_disk_dir else "store_disk_dir",
            "--store_memory_mb and --store_disk_dir go together (RAM budget, where the rest "
            "goes)")  # fmt: skip
    if cfg.model not in models.MODELS:
        bad("model", f"choose from {', '.join(sorted(models.MODELS))}")
    if not callable(getattr(optax, cfg.dense_optimizer, None)):
        bad("dense_optimizer", "not an optax optimizer (e.g. adam, adagrad, sgd, lamb)")
    for field, parse in (
        ("admission", hs.admission.parse),
        ("eviction", hs.eviction.parse),
        ("sparse_optimizer", lambda name: hs.optimizers.from_name(name, 0.1)),
    ):
        try:
            parse(getattr(cfg, field))
        except ValueError as e:
            bad(field, str(e))
    if cfg.format in ("slot", "paddlerec") and not cfg.slot_names:
        bad("slot_names", f"format={cfg.format} needs the slot numbers to read")
