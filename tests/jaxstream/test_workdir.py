"""What a resumed run may change: every config field, one at a time."""

from __future__ import annotations

import dataclasses

import pytest

from jaxstream import config
from jaxstream import workdir as workdir_lib

# The fields a run may change on resume (they change neither the model nor the data it
# trained on), written out here as the reference the workdir's list must equal.
RESUMABLE = {
    "data_root", "max_partitions", "wait", "poll_seconds", "idle_timeout_seconds",
    "gap_wait_seconds", "max_malformed_fraction", "staleness", "store_shards",
    "table_capacity", "keep_bases", "metrics_file", "tensorboard", "progress",
    "dump_predictions", "devices", "batch_threads", "store_memory_mb", "store_disk_dir",
    "pass_batches", "keep_batches_mb", "read_threads",
}  # fmt: skip


def _other(value):
    """A different value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, tuple):
        return (*value, value[-1] if value else 1)
    if dataclasses.is_dataclass(value):
        f = dataclasses.fields(value)[0]
        return dataclasses.replace(value, **{f.name: _other(getattr(value, f.name))})
    return f"{value}x"  # a string, or None


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(config.TrainConfig)])
def test_changing_a_field_on_resume_is_refused_unless_it_is_resumable(field):
    cfg = config.get_config()
    changed = dataclasses.replace(cfg, **{field: _other(getattr(cfg, field))})
    if field in RESUMABLE:
        workdir_lib.check_resumable(dataclasses.asdict(cfg), changed)
    else:
        with pytest.raises(
            workdir_lib.ConfigChanged, match=rf"differs from the checkpoint's in {field}[.:]"
        ):
            workdir_lib.check_resumable(dataclasses.asdict(cfg), changed)
