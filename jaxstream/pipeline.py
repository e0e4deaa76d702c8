"""One pass over a partition with the host work overlapped with the device step.

A batch goes through four stages, each a method of :class:`Pipeline`, run by its own
thread and linked to the next by a bounded queue:

1. batch (thread "batcher"): examples -> a deduplicated, padded :class:`HostBatch`, ahead;
2. pull + transfer (thread "producer"): the store rows of batch t+1 are pulled and moved
   to the device while the device runs step t;
3. step (the caller's thread): the jitted train or eval step (dispatch is asynchronous);
4. push + metrics (thread "pusher"): each step's row gradients come back to the host and
   are pushed to the store; predictions update the metrics.

``staleness`` bounds how far the pulls run ahead of the pushes: the pull of batch i waits
until the push of batch i - 1 - staleness is applied (0: every pull sees every earlier
update, as in a synchronous loop). Any stage's error stops the pass and is raised in the
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

import numpy as np

from hoststore import Store
from jaxstream.batching import HostBatch
from jaxstream.features import FeatureSpec
from jaxstream.metrics import BinaryMetrics
from jaxstream.step import to_device

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
    batch_seconds: float  # batcher time spent building (deduplicating) host batches
    predictions: list[np.ndarray]


def _pad_rows(rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, rows.shape[1]), np.float32)
    out[: len(rows)] = rows
    return out


def pull_batch_rows(store: Store, spec: FeatureSpec, hb: HostBatch, train: bool):
    """Each table's rows for host batch ``hb`` (count columns first with CVM), zero-padded
    to the batch's row bucket: the ``rows`` of a :class:`DeviceBatch`. A training pull
    counts every occurrence of a unique ID as a show (Paddle's statistics); an evaluation
    pull counts nothing."""
    return {
        t: _pad_rows(store.pull(t, ids, train=train, with_counts=spec.counts,
                                shows=hb.shows[t] if train else None), hb.padded_rows(t))
        for t, ids in hb.unique_ids.items()
    }  # fmt: skip


class _Stage(threading.Thread):
    """A stage's thread; an exception is kept for the caller, not lost."""

    def __init__(self, name, target):
        super().__init__(name=name, daemon=True)
        self._target_fn = target
        self.error: BaseException | None = None

    def run(self):
        try:
            self._target_fn()
        except BaseException as e:  # surfaced to the caller by the step stage
            self.error = e


class Pipeline:
    """Trains (``train_fn``) or evaluates (``eval_fn``) a stream of host batches against
    ``store``; one :meth:`run` per pass. See the module docstring for the stages."""

    def __init__(
        self,
        store: Store,
        spec: FeatureSpec,
        *,
        train_fn: Callable | None = None,
        eval_fn: Callable | None = None,
        staleness: int = 1,
        push_queue: int = 4,
        keep_predictions: bool = False,
        progress: Callable[[int, int], None] | None = None,
        device=None,
    ):
        """``device``: where each DeviceBatch goes (a device, or a DeviceBatch of shardings
        from :func:`jaxstream.step.batch_placement`); None: the default device."""
        if (train_fn is None) == (eval_fn is None):
            raise ValueError("give exactly one of train_fn and eval_fn")
        if staleness < 0:
            raise ValueError("staleness must be >= 0")
        self.store, self.spec = store, spec
        self.train = train_fn is not None
        self.train_fn, self.eval_fn = train_fn, eval_fn
        self.staleness, self.push_queue = staleness, push_queue
        self.keep_predictions, self.progress, self.device = keep_predictions, progress, device

    def run(self, batches: Iterable[HostBatch], params, opt_state=None) -> PassResult:
        self._batches = batches
        self._made: queue.Queue = queue.Queue(maxsize=2)  # host batches, ahead of their pull
        self._ready: queue.Queue = queue.Queue(maxsize=max(1, self.staleness + 1))
        self._to_push: queue.Queue = queue.Queue(maxsize=self.push_queue)
        self._pushed = 0
        self._pushed_cv = threading.Condition()
        self._stop = threading.Event()
        self._metrics = BinaryMetrics()
        self._predictions: list[np.ndarray] = []
        self._timers = {"host": 0.0, "push": 0.0, "batch": 0.0}
        self._stages = [_Stage("producer", self._pull_stage), _Stage("pusher", self._push_stage),
                        _Stage("batcher", self._batch_stage)]  # fmt: skip
        for stage in self._stages:
            stage.start()
        t_start = time.perf_counter()
        try:
            params, opt_state, n = self._step_stage(params, opt_state)
        finally:
            self._stop.set()
            for stage in self._stages:
                stage.join(5.0)
        return PassResult(params, opt_state, self._metrics, n, time.perf_counter() - t_start,
                          self._timers["host"], self._timers["push"], self._timers["batch"],
                          self._predictions)  # fmt: skip

    # ------------------------------------------------------------------ 1. batch

    def _batch_stage(self) -> None:
        made = iter(self._batches)
        while True:
            t0 = time.perf_counter()
            hb = next(made, _DONE)
            self._timers["batch"] += time.perf_counter() - t0
            if not self._put(self._made, hb) or hb is _DONE:
                return

    # ------------------------------------------------------------------ 2. pull + transfer

    def _pull_stage(self) -> None:
        for i in itertools.count():
            hb = self._get(self._made)
            if hb is None or hb is _DONE:
                break
            if self.train:
                with self._pushed_cv:
                    while self._pushed < i - self.staleness and not self._stop.is_set():
                        self._pushed_cv.wait(_POLL)
            if self._stop.is_set():
                return
            t0 = time.perf_counter()
            rows = pull_batch_rows(self.store, self.spec, hb, self.train)
            db = hb.device_batch(rows)
            db = to_device(db, self.device)
            self._timers["host"] += time.perf_counter() - t0
            if not self._put(self._ready, (hb, db)):
                return
        self._put(self._ready, _DONE)

    # ------------------------------------------------------------------ 3. step

    def _step_stage(self, params, opt_state):
        n = 0
        while True:
            try:
                item = self._ready.get(timeout=_POLL)
            except queue.Empty:
                self._check()
                if not self._stages[0].is_alive() and self._ready.empty():
                    self._check()
                    raise PipelineError("producer stopped without finishing the pass") from None
                continue
            if item is _DONE:
                break
            hb, db = item
            if self.train:
                out = self.train_fn(params, opt_state, db)
                params, opt_state, row_grads, preds = (out.params, out.opt_state,
                                                       out.row_grads, out.predictions)  # fmt: skip
            else:
                row_grads, preds = None, self.eval_fn(params, db)
            while not self._put(self._to_push, (hb, row_grads, preds)):
                self._check()
            n += 1
            if self.progress:
                self.progress(n, hb.size)
            self._check()
        self._put(self._to_push, _DONE)
        while self._stages[1].is_alive():
            self._stages[1].join(_POLL)
            self._check()
        self._check()
        return params, opt_state, n

    # ------------------------------------------------------------------ 4. push + metrics

    def _push_stage(self) -> None:
        while True:
            try:
                item = self._to_push.get(timeout=_POLL)
            except queue.Empty:
                if self._stop.is_set():
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
                    self.store.push(t, hb.unique_ids[t], np.asarray(g)[:u], clicks=hb.clicks[t],
                                    counts=hb.shows[t], assume_unique=True)  # fmt: skip
            self._metrics.update(hb.labels[: hb.size], preds)
            if self.keep_predictions:
                self._predictions.append(preds)
            self._timers["push"] += time.perf_counter() - t0
            with self._pushed_cv:
                self._pushed += 1
                self._pushed_cv.notify_all()

    # ------------------------------------------------------------------ plumbing

    def _put(self, q: queue.Queue, item) -> bool:
        while not self._stop.is_set():
            try:
                q.put(item, timeout=_POLL)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue):
        while not self._stop.is_set():
            try:
                return q.get(timeout=_POLL)
            except queue.Empty:
                continue
        return None

    def _check(self) -> None:
        for stage in self._stages:
            if stage.error is not None:
                self._stop.set()
                raise PipelineError(f"{stage.name} failed: {stage.error!r}") from stage.error


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
    **options,
) -> PassResult:
    """One pass of a :class:`Pipeline`: evaluates (``train=False``) or trains on
    ``batches``; returns the new state and the metrics."""
    fns = {"train_fn": train_fn} if train else {"eval_fn": eval_fn}
    return Pipeline(store, spec, **fns, **options).run(batches, params, opt_state)
