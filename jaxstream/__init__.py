"""jaxstream: streaming (online) CTR training in JAX/Flax over a host-resident store."""

from jaxstream import models
from jaxstream.batching import HostBatch, make_batch
from jaxstream.config import TrainConfig, get_config, smoke_config
from jaxstream.features import FeatureSpec, SlotSpec, salt_ids, single_table_spec
from jaxstream.metrics import BinaryMetrics
from jaxstream.stream import Partition, PartitionSource, SourceConfig
from jaxstream.train import TrainState, feature_spec, train_and_evaluate

__all__ = [
    "BinaryMetrics",
    "FeatureSpec",
    "HostBatch",
    "Partition",
    "PartitionSource",
    "SlotSpec",
    "SourceConfig",
    "TrainConfig",
    "TrainState",
    "feature_spec",
    "get_config",
    "make_batch",
    "models",
    "salt_ids",
    "single_table_spec",
    "smoke_config",
    "train_and_evaluate",
]
