"""Several trainer processes: jax.distributed for the dense parameters, one shared store.

Each worker trains on its own slice of every partition, data parallel on its local devices.
Dense gradients are summed across workers with a JAX collective over all of their devices
(gloo on CPU hosts, NCCL on GPUs) before every optimizer update, so the dense parameters
stay identical on all workers; sparse rows go through the shared store asynchronously, as
with Paddle's a_sync parameter servers. Metric histograms are summed the same way, so AUC
merges exactly.
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
from jaxstream.workdir import RunError

_MESSAGE_BYTES = 1024  # a partition's key and path, as worker 0 sends them to the others


class WorkersDisagree(RunError):
    """The workers of one run were started in ways that cannot train together."""


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
        """One device of each worker: what host values are summed over."""
        return Mesh(np.array([_devices_of(p)[0] for p in range(self.count)]), ("workers",))

    def allreduce_sum(self, tree):
        """The elementwise sum of ``tree`` over all workers, as host numpy arrays."""
        if self.count == 1:
            return jax.tree.map(np.asarray, tree)
        sharding = NamedSharding(self._mesh, P("workers"))
        stacked = jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)[None]), tree
        )
        summed = _summed_to(NamedSharding(self._mesh, P()))(stacked)
        return jax.tree.map(lambda a: np.asarray(a.addressable_data(0)), summed)

    def device_sum(self, tree):
        """The sum of ``tree`` over all workers, left where each leaf is: on this worker's
        device, or replicated on its local devices (a step that trains data parallel on
        them). Each worker's copies become its row of one global array over every worker's
        devices and the collective runs in a jitted sum; nothing goes through host memory."""
        if self.count == 1:
            return tree
        leaves = jax.tree.leaves(tree)
        mesh = _grid(self.count, len(leaves[0].sharding.device_set))
        rows = NamedSharding(mesh, P("workers"))

        def stack(x):
            if not x.sharding.is_fully_replicated:
                raise ValueError(f"device_sum needs each worker's whole value on each of its "
                                 f"devices, got {x.sharding}")  # fmt: skip
            return jax.make_array_from_single_device_arrays(
                (self.count, *x.shape), rows, [s.data[None] for s in x.addressable_shards]
            )

        summed = _summed_to(NamedSharding(mesh, P()))(jax.tree.map(stack, tree))
        return jax.tree.map(
            lambda a, x: jax.make_array_from_single_device_arrays(
                x.shape, x.sharding, [s.data for s in a.addressable_shards]),
            summed, tree)  # fmt: skip

    def check_same_devices(self, per_worker: int) -> None:
        """Refuses a run whose workers would train on different numbers of local devices
        (their collectives would not match)."""
        if self.count == 1:
            return
        counts = np.zeros(self.count, np.int64)
        counts[self.index] = per_worker
        counts = self.allreduce_sum(counts)
        if len(set(counts.tolist())) > 1:
            each = ", ".join(f"worker {i}: {c}" for i, c in enumerate(counts))
            raise WorkersDisagree(
                f"the workers train on different numbers of local devices "
                f"({each}); give each the same number (--devices)"
            )

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
    return Workers(worker_index, num_workers)


@functools.cache
def _summed_to(out: NamedSharding):
    """A jitted sum over the leading (workers) axis, the result placed as ``out``."""
    return jax.jit(lambda t: jax.tree.map(lambda a: a.sum(0), t), out_shardings=out)


@functools.cache
def _grid(workers: int, per_worker: int) -> Mesh:
    """The first ``per_worker`` devices of every worker: the global mesh of a step that
    trains data parallel on that many local devices in each of the processes."""
    rows = [_devices_of(p)[:per_worker] for p in range(workers)]
    if any(len(r) < per_worker for r in rows):
        raise ValueError(f"a worker has fewer than {per_worker} devices: "
                         f"{[len(_devices_of(p)) for p in range(workers)]}")  # fmt: skip
    return Mesh(np.array(rows), ("workers", "data"))


def _devices_of(process: int) -> list:
    return sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)
