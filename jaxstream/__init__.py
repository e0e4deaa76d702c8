"""jaxstream: streaming (online) CTR training in JAX/Flax over a host-resident store.

Where things live: the config in :mod:`jaxstream.config`, slots and tables in
:mod:`jaxstream.features`, towers in :mod:`jaxstream.models`, the jitted steps in
:mod:`jaxstream.step`, the overlapped pass in :mod:`jaxstream.pipeline`, the per-partition
loop in :mod:`jaxstream.train`, checkpoints in :mod:`jaxstream.checkpoint`, serving in
:mod:`jaxstream.serving`, readers and the synthetic stream in :mod:`jaxstream.data`.
"""

from jaxstream import models
from jaxstream.batching import HostBatch, make_batch
from jaxstream.config import TrainConfig, get_config, smoke_config
from jaxstream.features import FeatureSpec, SlotSpec, salt_ids, single_table_spec
from jaxstream.metrics import BinaryMetrics
from jaxstream.pipeline import Pipeline, PipelineError, run_pass
from jaxstream.records import partition_line
from jaxstream.serving import Predictor
from jaxstream.step import DeviceBatch, StepOutput, make_steps, to_device
from jaxstream.stream import Partition, PartitionSource, SourceConfig
from jaxstream.train import (
    TrainState,
    dense_optimizer_of,
    feature_spec,
    model_of,
    read_path,
    train_and_evaluate,
)

__all__ = [
    "BinaryMetrics",
    "DeviceBatch",
    "FeatureSpec",
    "HostBatch",
    "Partition",
    "PartitionSource",
    "Pipeline",
    "PipelineError",
    "Predictor",
    "SlotSpec",
    "SourceConfig",
    "StepOutput",
    "TrainConfig",
    "TrainState",
    "dense_optimizer_of",
    "feature_spec",
    "get_config",
    "make_batch",
    "make_steps",
    "model_of",
    "models",
    "partition_line",
    "read_path",
    "run_pass",
    "salt_ids",
    "single_table_spec",
    "smoke_config",
    "to_device",
    "train_and_evaluate",
]
