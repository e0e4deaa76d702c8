"""One pass over a partition with the host work overlapped with the device step.

Four threads cooperate:

- the batcher parses a partition's examples into deduplicated host batches, ahead;
- the producer pulls the rows of batch t+1 from the store and moves them to the device
  while the device runs step t;
- the main thread dispatches jitted steps (JAX dispatch is asynchronous);
- the pusher takes each step's row gradients back to the host and pushes them to the
  store through a bounded queue, and accumulates the metrics.

``staleness`` bounds how far the pulls run ahead of the pushes: the pull of batch i waits
until the push of batch i - 1 - staleness is applied (0: every pull sees every earlier
update, as in a synchronous loop). Any thread's error stops the pass and is raised in the
caller; no queue wait is unbounded.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable

import jax
import numpy as np

from hoststore.store import Store
from jaxstream.batching import HostBatch
from jaxstream.features import FeatureSpec
from jaxstream.metrics import BinaryMetrics
from jaxstream.step import DeviceBatch

log = logging.getLogger(__name__)
_POLL = 0.1
_DONE = object()


class PipelineError(RuntimeError):
    pass


@dataclasses.dataclass
class PassResult:
    params: object
    opt_state: object
    metrics: BinaryMetrics
    batches: int
    seconds: float
    host_seconds: float  # producer time spent pulling and moving rows to the device
    push_seconds: float
    predictions: list[np.ndarray]


def _pad_rows(rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, rows.shape[1]), np.float32)
    out[: len(rows)] = rows
    return out


def _pull(store: Store, spec: FeatureSpec, table: str, ids: np.ndarray, train: bool):
    # Stores written before counts existed keep working when the spec does not ask for them.
    if spec.counts:
        return store.pull(table, ids, train=train, with_counts=True)
    return store.pull(table, ids, train=train)


def pull_batch_rows(store: Store, spec: FeatureSpec, hb: HostBatch, train: bool):
    """Each table's rows for host batch ``hb`` (count columns first with CVM), zero-padded
    to the batch's row bucket: the ``rows`` of a :class:`DeviceBatch`."""
    return {
        t: _pad_rows(_pull(store, spec, t, ids, train), hb.padded_rows(t))
        for t, ids in hb.unique_ids.items()
    }


class _Worker(threading.Thread):
    def __init__(self, name, target):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self):
        try:
            self._target_fn()
        except BaseException as e:  # surfaced to the caller by the main thread
            self.error = e


def run_pass(
    store: Store,
    spec: FeatureSpec,
    batches: Iterable[HostBatch],
    *,
    train: bool,
    train_fn: Callable | None = None,
    eval_fn: Callable | None = None,
    params=None,
    opt_state=None,
    staleness: int = 1,
    push_queue: int = 4,
    keep_predictions: bool = False,
    progress: Callable[[int, int], None] | None = None,
    device=None,
) -> PassResult:
    """Evaluates (``train=False``) or trains on ``batches``; returns new state and metrics."""
    if staleness < 0:
        raise ValueError("staleness must be >= 0")
    made: queue.Queue = queue.Queue(maxsize=2)  # host batches, built ahead of their pull
    ready: queue.Queue = queue.Queue(maxsize=max(1, staleness + 1))
    to_push: queue.Queue = queue.Queue(maxsize=push_queue)
    pushed = 0
    pushed_cv = threading.Condition()
    stop = threading.Event()
    metrics = BinaryMetrics()
    predictions: list[np.ndarray] = []
    timers = {"host": 0.0, "push": 0.0}

    def put(q, item):
        while not stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def make_batches():
        for hb in batches:
            if not put(made, hb):
                return
        put(made, _DONE)

    def produce():
        for i in itertools.count():
            hb = get(made)
            if hb is None or hb is _DONE:
                break
            if train:
                with pushed_cv:
                    while pushed < i - staleness and not stop.is_set():
                        pushed_cv.wait(_POLL)
            if stop.is_set():
                return
            t0 = time.perf_counter()
            rows = pull_batch_rows(store, spec, hb, train)
            db = DeviceBatch(rows, hb.index, hb.mask, hb.dense, hb.labels, hb.weights)
            db = jax.device_put(db, device)
            timers["host"] += time.perf_counter() - t0
            if not put(ready, (hb, db)):
                return
        put(ready, _DONE)

    def get(q):
        while not stop.is_set():
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue
        return None

    def push():
        nonlocal pushed
        while True:
            try:
                item = to_push.get(timeout=_POLL)
            except queue.Empty:
                if stop.is_set():
                    return
                continue
            if item is _DONE:
                return
            hb, row_grads, preds = item
            preds = np.asarray(preds)[: hb.size]  # waits for the device step
            t0 = time.perf_counter()
            if row_grads is not None:
                for t, g in row_grads.items():
                    u = len(hb.unique_ids[t])
                    store.push(t, hb.unique_ids[t], np.asarray(g)[:u], clicks=hb.clicks[t],
                               assume_unique=True)  # fmt: skip
            metrics.update(hb.labels[: hb.size], preds)
            if keep_predictions:
                predictions.append(preds)
            timers["push"] += time.perf_counter() - t0
            with pushed_cv:
                pushed += 1
                pushed_cv.notify_all()

    workers = [_Worker("producer", produce), _Worker("pusher", push),
               _Worker("batcher", make_batches)]  # fmt: skip
    for w in workers:
        w.start()

    def check():
        for w in workers:
            if w.error is not None:
                stop.set()
                raise PipelineError(f"{w.name} failed: {w.error!r}") from w.error

    t_start = time.perf_counter()
    n = 0
    try:
        while True:
            try:
                item = ready.get(timeout=_POLL)
            except queue.Empty:
                check()
                if not workers[0].is_alive() and ready.empty():
                    check()
                    raise PipelineError("producer stopped without finishing the pass") from None
                continue
            if item is _DONE:
                break
            hb, db = item
            if train:
                params, opt_state, row_grads, preds, _ = train_fn(params, opt_state, db)
            else:
                row_grads, preds = None, eval_fn(params, db)
            while not put(to_push, (hb, row_grads, preds)):
                check()
            n += 1
            if progress:
                progress(n, hb.size)
            check()
        put(to_push, _DONE)
        while workers[1].is_alive():
            workers[1].join(_POLL)
            check()
        check()
    finally:
        stop.set()
        for w in workers:
            w.join(5.0)
    return PassResult(params, opt_state, metrics, n, time.perf_counter() - t_start,
                      timers["host"], timers["push"], predictions)  # fmt: skip
