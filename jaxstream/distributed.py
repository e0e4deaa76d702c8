"""Several trainer processes: jax.distributed for the dense parameters, one shared store.

Each worker trains on its own slice of every partition. Dense gradients are summed across
workers with a JAX collective (gloo on CPU hosts, NCCL on GPUs) before every optimizer
update, so the dense parameters stay identical on all workers; sparse rows go through the
shared store asynchronously, as with Paddle's a_sync parameter servers. Metric histograms
are summed the same way, so AUC merges exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxstream.stream import Partition, key_time

_MESSAGE_BYTES = 1024  # a partition's key and path, as worker 0 sends them to the others


@dataclasses.dataclass
class Workers:
    """This process's place among the trainers; ``Workers()`` is a single worker."""

    index: int = 0
    count: int = 1

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @functools.cached_property
    def _mesh(self) -> Mesh:
        return Mesh(np.array(jax.devices()), ("workers",))

    @functools.cached_property
    def _sum(self):
        return jax.jit(lambda t: jax.tree.map(lambda a: a.sum(0), t),
                       out_shardings=NamedSharding(self._mesh, P()))  # fmt: skip

    def allreduce_sum(self, tree):
        """The elementwise sum of ``tree`` over all workers, as host numpy arrays."""
        if self.count == 1:
            return jax.tree.map(np.asarray, tree)
        sharding = NamedSharding(self._mesh, P("workers"))
        stacked = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)[None]), tree
        )
        return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), self._sum(stacked))

    def device_sum(self, tree):
        """The sum of ``tree`` (arrays on this worker's device) over all workers, left on
        the device: each worker's arrays become its shard of one global array and the
        collective runs in a jitted sum; nothing goes through host memory."""
        if self.count == 1:
            return tree
        sharding = NamedSharding(self._mesh, P("workers"))

        def shard(x):
            return jax.make_array_from_single_device_arrays(
                (self.count, *x.shape), sharding, [x[None]])  # fmt: skip

        return jax.tree.map(lambda a: a.addressable_data(0), self._sum(jax.tree.map(shard, tree)))

    def barrier(self) -> None:
        if self.count > 1:
            self.allreduce_sum(np.zeros(1, np.float32))

    def on_first(self, fn):
        """Runs ``fn`` on worker 0 while the others wait; returns its result there."""
        self.barrier()
        out = fn() if self.is_first else None
        self.barrier()
        return out

    def follow_first(self, source: Iterable[Partition], root: str) -> Iterator[Partition]:
        """The partitions worker 0's ``source`` yields, on every worker, one at a time.

        Each worker's own listing is taken at another instant and could disagree about an
        hour that landed late or was skipped after a gap; workers that trained different
        partitions would sum the gradients of different data. So worker 0 decides and
        sends each partition's key and path (relative to ``root``) to the others."""
        if self.count == 1:
            yield from source
            return
        mine = iter(source) if self.is_first else None
        while True:
            part = next(mine, None) if self.is_first else None
            message = np.zeros(_MESSAGE_BYTES, np.int32)  # all zero: the stream has ended
            if part is not None:
                data = f"{part.key}\n{os.path.relpath(part.path, root)}".encode()
                if len(data) > _MESSAGE_BYTES:
                    raise ValueError(f"partition path too long to send: {part.path}")
                message[: len(data)] = np.frombuffer(data, np.uint8)
            got = np.asarray(self.allreduce_sum(message))
            if not got.any():
                return
            if self.is_first:
                yield part
            else:
                key, rel = bytes(got[got > 0].astype(np.uint8)).decode().split("\n")
                yield Partition(key, os.path.normpath(os.path.join(root, rel)), key_time(key))

    def slice(self, n: int) -> tuple[int, int]:
        """This worker's contiguous share [lo, hi) of n examples."""
        return self.index * n // self.count, (self.index + 1) * n // self.count

    def batches_per_worker(self, n: int, batch_size: int) -> int:
        """The same batch count on every worker (the largest share decides)."""
        largest_share = -(-n // self.count)
        return -(-largest_share // batch_size)


def initialize(coordinator: str, num_workers: int, worker_index: int) -> Workers:
    """Joins the jax.distributed job (gloo collectives on CPU)."""
    # Before anything touches a backend: collectives of CPU devices go through gloo.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_workers, process_id=worker_index)
    if jax.local_device_count() > 1:  # the host all-reduce feeds one device per process
        raise ValueError(f"trainer {worker_index} sees {jax.local_device_count()} local "
                         "devices: several trainer processes take one device each (e.g. "
                         "CUDA_VISIBLE_DEVICES per process), or run one process on all "
                         "of them")  # fmt: skip
    return Workers(worker_index, num_workers)
