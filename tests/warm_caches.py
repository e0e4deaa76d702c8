"""Compiles the store's numba kernels and the smoke step once, into their on-disk caches:
``python -m tests.warm_caches``. The test run does this first on a fresh checkout (see
``tests/conftest.py``): otherwise each test process, and each trainer or shard server started
before the caches are written, compiles the same kernels on its own.

The work: a tiny stream trained with count admission, eviction, a shrink every partition
and a disk tier, then resumed from its checkpoint (snapshot writes and loads)."""

from __future__ import annotations

import dataclasses
import os
import tempfile


def main() -> None:
    from jaxstream import config, train
    from jaxstream.data.synthetic import StreamConfig, generate

    with tempfile.TemporaryDirectory(prefix="jaxstream-warm-") as tmp:
        stream = StreamConfig(hours=2, rows_per_hour=1000, max_vocab=2000)
        generate(os.path.join(tmp, "data"), stream)
        cfg = dataclasses.replace(
            config.smoke_config(), data_root=os.path.join(tmp, "data"), synthetic=stream,
            admission="count_filter:2", eviction="unseen:1", shrink_every="partition",
            store_memory_mb=0.05, store_disk_dir=os.path.join(tmp, "disk"), max_partitions=1,
        )  # fmt: skip
        work = os.path.join(tmp, "work")
        train.train_and_evaluate(cfg, work)
        train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=None), work)


if __name__ == "__main__":
    main()
