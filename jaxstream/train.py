"""The streaming trainer: per partition, evaluate first, then train, then record.

Reads top to bottom: set up (data, feature spec, store, model, steps) -> loop over ready
partitions (progressive evaluation, one training pass, metrics, checkpoint hook, clock and
shrink) -> summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import NamedTuple

import jax
import numpy as np
import optax
from flax import nnx

import hoststore as hs
from jaxstream import models, records
from jaxstream import workdir as workdir_lib
from jaxstream.batching import TwoPasses, batch_threads, batches
from jaxstream.checkpoint import CheckpointManager
from jaxstream.config import TrainConfig, disk_tier
from jaxstream.config import check as check_config
from jaxstream.data import readers
from jaxstream.data.examples import Examples, ReadReport
from jaxstream.data.paddlerec import read_paddlerec
from jaxstream.data.synthetic import generate
from jaxstream.device_pass import PassTrainer, make_pass_step
from jaxstream.distributed import Workers
from jaxstream.features import FeatureSpec, single_table_spec
from jaxstream.metrics import BinaryMetrics
from jaxstream.pipeline import PipelineError, run_pass
from jaxstream.step import (
    batch_placement,
    local_mesh,
    make_distributed_train_step,
    make_steps,
    replicate,
)
from jaxstream.stream import Partition, PartitionSource, SourceConfig, key_time

log = logging.getLogger(__name__)


def feature_spec(cfg: TrainConfig) -> FeatureSpec:
    table = hs.TableConfig(
        "embedding",
        cfg.embedding_dim,
        optimizer=hs.optimizers.from_name(cfg.sparse_optimizer, cfg.sparse_learning_rate),
        initializer=hs.uniform(cfg.initializer_scale),
        admission=dataclasses.replace(
            hs.admission.parse(cfg.admission), pending_ttl=cfg.pending_ttl
        ),
        eviction=hs.eviction.parse(cfg.eviction),
        seed=cfg.seed,
        initial_capacity=cfg.table_capacity,
    )
    if cfg.format == "criteo":
        return single_table_spec(readers.CRITEO_SLOTS, readers.CRITEO_DENSE, table, counts=cfg.cvm)
    if cfg.format == "avazu":
        return single_table_spec(readers.AVAZU_SLOTS, 0, table, counts=cfg.cvm)
    if cfg.format in ("slot", "paddlerec"):
        if not cfg.slot_names:
            raise ValueError(f"format={cfg.format} needs slot_names (the slot numbers to read)")
        dense = cfg.num_dense if cfg.format == "paddlerec" else 0
        return single_table_spec(cfg.slot_names, dense, table, cfg.slot_max_len,
                                 cfg.slot_pooling, counts=cfg.cvm)  # fmt: skip
    raise ValueError(f"unknown format {cfg.format!r}; use criteo, avazu, slot or paddlerec")


def read_partition(cfg: TrainConfig, part: Partition) -> tuple[Examples, ReadReport]:
    if not part.files:
        raise ValueError(f"partition {part.path} has no part-* files")
    return read_files(cfg, part.files)


def read_path(cfg: TrainConfig, path: str) -> tuple[Examples, ReadReport]:
    """The examples of a partition folder (its part-* files) or of one file."""
    files = [path] if os.path.isfile(path) else Partition("", path, None).files
    if not files:
        raise ValueError(f"{path}: no such file, nor a folder with part-* files")
    return read_files(cfg, files)


def read_threads(n: int) -> int:
    """``n``, or for 0 one per core this process may use, at most 8."""
    return n or min(8, len(os.sched_getaffinity(0)))


def read_files(cfg: TrainConfig, files: list[str]) -> tuple[Examples, ReadReport]:
    """The examples of ``files`` in order, in ``cfg.format``; the report lists each file
    with its example count."""
    parts, report = [], ReadReport()
    threads = read_threads(cfg.read_threads)
    for path in files:
        if cfg.format == "criteo":
            ex, rep = readers.read_criteo(path, threads=threads)
        elif cfg.format == "avazu":
            ex, rep, _ = readers.read_avazu(path, threads=threads)
        elif cfg.format == "paddlerec":
            ex, rep = read_paddlerec(path, cfg.slot_names, cfg.num_dense)
        else:
            ex, rep = readers.read_slots(path, cfg.slot_names)
        rep.files.append((os.path.basename(path), len(ex)))
        parts.append(ex)
        report.merge(rep)
    return Examples.concat(parts), report


def model_of(cfg: TrainConfig, spec: FeatureSpec) -> nnx.Module:
    """The model ``cfg.model`` names over ``spec``'s slots (with its count columns: CVM)."""
    return models.build(cfg.model, spec.slot_dims(), spec.num_dense, cfg.seed,
                        hidden=cfg.hidden, count_columns=spec.count_columns)  # fmt: skip


def dense_optimizer_of(cfg: TrainConfig) -> optax.GradientTransformation:
    """The optax optimizer ``cfg.dense_optimizer`` names, at ``cfg.dense_learning_rate``."""
    factory = getattr(optax, cfg.dense_optimizer, None)
    if not callable(factory):
        raise ValueError(f"unknown dense_optimizer {cfg.dense_optimizer!r}: not an optax "
                         "optimizer (e.g. adam, adagrad, sgd, lamb)")  # fmt: skip
    return factory(cfg.dense_learning_rate)


@dataclasses.dataclass
class TrainState:
    params: object
    opt_state: object
    cursor: str | None = None
    cumulative: BinaryMetrics = dataclasses.field(default_factory=BinaryMetrics)
    partitions: int = 0
    skipped: list[str] = dataclasses.field(default_factory=list)  # missing, not yet trained


# A progress reporter: called with a pass's description and example count, it returns a
# context manager that yields the per-batch callback ``tick(batches_done, examples)``.
Progress = Callable[[str, int], contextlib.AbstractContextManager[Callable[[int, int], None]]]


def _no_progress(desc: str, total: int):
    return contextlib.nullcontext(None)


def train_and_evaluate(
    cfg: TrainConfig,
    workdir: str,
    *,
    model: nnx.Module | None = None,
    features: FeatureSpec | None = None,
    dense_optimizer: optax.GradientTransformation | None = None,
    store: hs.Store | None = None,
    on_partition_end: Callable[[Partition, TrainState, dict], None] | None = None,
    on_resume: Callable[[TrainState], None] | None = None,
    progress: Progress | None = None,
    workers: Workers | None = None,
    adopt_store: bool = False,
) -> dict:
    """Runs the stream; returns a summary. Nothing is printed: ``on_partition_end`` gets
    each partition's metrics record (:func:`jaxstream.partition_line` formats it),
    ``on_resume`` the state a checkpoint restored, ``progress`` the batches as they go.

    Defaults come from ``cfg``: ``features`` (slots, tables with their dims and policies)
    from :func:`feature_spec`, ``model`` from :func:`model_of` over the features,
    ``dense_optimizer`` from ``cfg.dense_optimizer`` (any optax transformation: schedules,
    clipping and chains work), ``store`` an in-process
    :class:`hoststore.LocalStore` (or any :class:`hoststore.Store`). With ``workers``
    (several trainer processes, see :mod:`jaxstream.distributed`) each trains on its slice
    of every partition against the shared ``store``; worker 0 writes the metrics and the
    checkpoints.

    A run that cannot do its job raises :class:`jaxstream.workdir.RunError` with one line
    saying why, before it changes anything: another trainer holds the workdir, the config
    differs from the checkpoint's in a field that changes the model or the data, the
    workdir, the metrics file or the disk tier's directory cannot be used, the data root
    is missing, a partition is mostly malformed, or there was nothing to train.
    """
    check_config(cfg)
    workers = workers or Workers()
    workdir = workdir_lib.prepare(workdir)
    if workers.is_first:  # it writes the metrics
        workdir_lib.check_appendable(_metrics_path(cfg, workdir), "metrics_file")
    if cfg.store_disk_dir and store is None:
        workdir_lib.prepare(cfg.store_disk_dir, "store_disk_dir")
    if cfg.checkpoint:  # read-only: a refused run leaves the workdir byte for byte as it was
        saved = CheckpointManager.newest_config(workdir)
        if saved is not None:
            workdir_lib.check_resumable(saved, cfg)
    own = store is None  # a store made here is closed here (a disk tier's files go with it)
    if own:
        store = hs.LocalStore(shards=cfg.store_shards, tier=disk_tier(cfg))
    try:
        # One trainer per workdir (several workers of one run share it: the first holds it).
        with workdir_lib.lock(workdir) if workers.is_first else contextlib.nullcontext():
            return _train(cfg, workdir, model, features, dense_optimizer, store,
                          on_partition_end, on_resume, progress, workers, adopt_store)  # fmt: skip
    except (hs.StoreError, PipelineError) as e:
        cause = e if isinstance(e, hs.StoreError) else e.__cause__
        if not isinstance(cause, hs.StoreError):
            raise
        raise StoreFailed(f"the store failed while training: {' '.join(str(cause).split())}; "
                          "nothing after the last committed checkpoint was committed: a "
                          "rerun resumes from it") from e  # fmt: skip
    finally:
        if own:
            store.close()


def _metrics_path(cfg: TrainConfig, workdir: str) -> str:
    return cfg.metrics_file or os.path.join(workdir, "metrics.jsonl")


class NothingToTrain(workdir_lib.RunError):
    pass


class TooManyMalformed(workdir_lib.RunError):
    pass


class CheckpointFailed(workdir_lib.RunError):
    pass


class CheckpointsUnusable(workdir_lib.RunError):
    pass


class StoreFailed(workdir_lib.RunError):
    """A store call failed mid-run (a shard down, or taken over by another run)."""


def _append_record(path: str, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise workdir_lib.UnusablePath(f"metrics_file {path}: the record of "
                                       f"{record['partition']} could not be written: "
                                       f"{e.strerror or e}") from e  # fmt: skip


@contextlib.contextmanager
def _one_line_if_not_written(ckpt: CheckpointManager, step: int, partition: str):
    """A failure to write checkpoint ``step`` (a full disk, a shard server that cannot
    write) ends the run with one line: nothing of it is committed (its meta.json is what
    commits it), and a rerun resumes from the last one that was."""
    before = ckpt.committed
    try:
        yield
    except (OSError, ValueError, hs.StoreError) as e:  # tensorstore reports I/O as ValueError
        resume = (f"after {before['cursor']} (checkpoint {before['step']})" if before
                  else "from the first partition")  # fmt: skip
        why = " ".join(str(e).split())  # one line, whatever the library's message
        raise CheckpointFailed(f"checkpoint {step} (after {partition}) could not be written: "
                               f"{why}; nothing of it is committed, a rerun resumes {resume}"
                               ) from e  # fmt: skip


def _train(cfg, workdir, model, features, dense_optimizer, store, on_partition_end, on_resume,
           progress, workers, adopt_store) -> dict:  # fmt: skip
    # ------------------------------------------------------------------ set up
    if cfg.data_root is not None and not os.path.isdir(cfg.data_root):
        raise NothingToTrain(f"data_root {cfg.data_root}: no such directory")
    data_root = cfg.data_root
    if data_root is None:
        data_root = os.path.join(workdir, "data")
        if not os.path.isdir(data_root):
            log.info("generating a synthetic stream under %s", data_root)
            generate(data_root, cfg.synthetic)
    spec = features if features is not None else feature_spec(cfg)
    for table in spec.tables:  # creates them, or checks that the store's are the same
        store.create_table(table)
    if model is None:
        model = model_of(cfg, spec)
    graphdef, params = nnx.split(model)
    tx = dense_optimizer if dense_optimizer is not None else dense_optimizer_of(cfg)
    progress = progress or _no_progress
    state = TrainState(params, tx.init(params))
    train_fn, eval_fn = make_steps(graphdef, tx, spec)
    # Every local device, data parallel inside the jitted step; with several processes
    # the dense gradients are then summed across them (a collective over all of their
    # devices, see make_distributed_train_step).
    if cfg.pass_batches and workers.count > 1:
        raise ValueError(f"--pass_batches={cfg.pass_batches}: pass mode trains in one process "
                         "(other workers would write a pass's rows between its begin and "
                         "end); use --pass_batches=0 with several workers")  # fmt: skip
    mesh = local_mesh(cfg.devices, cfg.batch_size)
    placement = batch_placement(mesh, spec) if mesh is not None else None
    local_devices = 1 if mesh is None else mesh.size
    workers.check_same_devices(local_devices)
    devices = local_devices * workers.count  # that trained, in all
    if workers.count > 1:
        train_fn = make_distributed_train_step(graphdef, tx, spec, workers, mesh)
    passes = None
    if cfg.pass_batches:
        passes = PassTrainer(store, spec, make_pass_step(graphdef, tx, spec, store.tables()),
                             cfg.pass_batches, mesh)  # fmt: skip
    metrics_path = _metrics_path(cfg, workdir)

    # ------------------------------------------------------------------ restore
    ckpt = CheckpointManager(workdir, cfg.keep_bases) if cfg.checkpoint else None
    restored = None
    if ckpt is not None:
        # A store already at the checkpoint's state (its tag says so) is not reloaded.
        tags = {name: s.get("tag", "") for name, s in store.stats().items()}
        restored = ckpt.restore(state.params, state.opt_state, store, load_store=workers.is_first,
                                store_tags=tags)  # fmt: skip
    if restored is None and ckpt is not None and ckpt.unusable:
        # Starting over would overwrite them (and the metrics lines they committed).
        step, why = ckpt.unusable[0]
        raise CheckpointsUnusable(
            f"{len(ckpt.unusable)} checkpoint(s) under {ckpt.root}, none of which restores "
            f"(the newest, {step}: {why}); nothing was changed: mend the cause (the same "
            "code and config that wrote them), or move the history aside with --start_over"
        )
    if restored is None and not adopt_store:
        _refuse_foreign_rows(store, spec)
    workers.barrier()  # the shared store is loaded (or checked) before anyone pulls from it
    run_id = (restored.meta.get("run_id") if restored else None) or _new_run_id(workers)
    if restored is not None:
        store = restored.store
        state = TrainState(restored.params, restored.opt_state, restored.cursor,
                           restored.cumulative, restored.step,
                           list(restored.meta.get("skipped", [])))  # fmt: skip
    if workers.is_first and ckpt is not None:
        # Lines for partitions no checkpoint committed (a run killed, or whose checkpoint
        # failed, after writing them; with no checkpoint at all, every line) are retrained
        # now: dropped, so the metrics keep one line per partition.
        dropped = records.truncate_metrics(metrics_path, state.cursor, state.skipped)
        if dropped:
            log.warning("%s: dropped %d line(s) of partitions no checkpoint committed (%s); "
                        "they are trained again", metrics_path, len(dropped),
                        ", ".join(dropped[:5]) + (" ..." if len(dropped) > 5 else ""))  # fmt: skip
    if restored is not None:
        log.info("resumed from checkpoint %d after partition %s", restored.step, restored.cursor)
        if on_resume is not None:
            on_resume(state)
    state.params, state.opt_state = replicate(mesh, (state.params, state.opt_state))
    writer = records.tensorboard_writer(cfg, workdir)
    source = PartitionSource(
        SourceConfig(data_root, cfg.pattern, poll_seconds=cfg.poll_seconds, wait=cfg.wait,
                     idle_timeout_seconds=cfg.idle_timeout_seconds,
                     max_partitions=cfg.max_partitions,
                     interval_minutes=cfg.split_interval_minutes,
                     gap_wait_seconds=cfg.gap_wait_seconds),
        cursor=state.cursor, skipped=state.skipped,
    )  # fmt: skip
    reported = 0
    log.info("devices: %s", jax.devices())

    # ------------------------------------------------------------------ loop
    last_day = None if state.cursor is None else key_time(state.cursor).date()
    malformed_total = 0
    partitions_before = state.partitions
    t_run = time.perf_counter()
    parts = workers.follow_first(source, data_root)
    # One worker reads the next partition while it trains on this one; several read in
    # step (the partition each trains is agreed through their collectives, in order).
    for part, examples, report, parse_s, seen in _read(parts, cfg, source, workers.count == 1):
        if report.lines == 0:
            raise TooManyMalformed(f"partition {part.path}: its part files hold no line (an "
                                   "empty hour is not trained as if it were one)")  # fmt: skip
        if report.malformed > cfg.max_malformed_fraction * report.lines:
            raise TooManyMalformed(
                f"partition {part.path}: {report.malformed} of {report.lines} lines malformed "
                f"(more than max_malformed_fraction={cfg.max_malformed_fraction}; is "
                f"format={cfg.format} right?)"
                + (f"; first: {report.first_errors[0]}" if report.first_errors else "")
            )
        malformed_total += report.malformed
        for err in report.first_errors:
            log.warning("malformed line %s", err)
        # The store moves past the checkpoint its tag names, before anything changes it (a
        # store that outlives a failed run, e.g. shard servers, is then reloaded on rerun,
        # not shrunk a second time at the same day boundary).
        if ckpt is not None:
            _tag(workers, store, spec, f"{run_id}/{state.partitions}+")
        # A day boundary forward (a late partition of an earlier day changes nothing).
        if last_day is not None and part.time.date() > last_day and cfg.shrink_every == "day":
            evicted = workers.on_first(store.shrink)
            log.info("day boundary: shrink evicted %s", evicted)
        last_day = max(last_day or part.time.date(), part.time.date())

        mine = examples.take(*workers.slice(len(examples)))
        steps = workers.batches_per_worker(len(examples), cfg.batch_size)

        def make(first, training, mine=mine, steps=steps):
            return batches(mine, spec, cfg.batch_size, steps,
                           batch_threads(cfg.batch_threads, training), first)  # fmt: skip

        # progressive validation: predict the partition before training on it (on the
        # same batches, built once)
        made = TwoPasses(make, cfg.keep_batches_mb << 20)
        with progress(f"{part.key} eval", len(mine)) as tick:
            ev = run_pass(store, spec, made.first(), train=False,
                          eval_fn=eval_fn, params=state.params, progress=tick,
                          keep_predictions=cfg.dump_predictions, device=placement)  # fmt: skip
        if cfg.dump_predictions:
            records.dump_predictions(workdir, part, examples, report, workers, ev.predictions)
        with progress(f"{part.key} train", len(mine)) as tick:
            if passes is not None:
                tr = passes.train(made.again(), state.params, state.opt_state, tick)
            else:
                tr = run_pass(store, spec, made.again(), train=True,
                              train_fn=train_fn, params=state.params, opt_state=state.opt_state,
                              staleness=cfg.staleness, progress=tick, device=placement)  # fmt: skip
        ev.metrics, tr.metrics = _merge(workers, ev.metrics), _merge(workers, tr.metrics)
        state.params, state.opt_state = tr.params, tr.opt_state
        state.cumulative = state.cumulative.merge(ev.metrics)
        if state.cursor is None or part.time > key_time(state.cursor):
            state.cursor = part.key
        state.skipped = sorted(seen.skipped - {part.key})
        state.partitions += 1

        def end_of_partition():
            if cfg.shrink_every == "partition":
                store.shrink()
            store.advance_clock(1)

        workers.on_first(end_of_partition)

        stats = records.table_totals(store.stats())
        record = {
            "partition": part.key,
            "progressive_auc": ev.metrics.auc(),
            "train_auc": tr.metrics.auc(),
            "logloss": ev.metrics.logloss(),
            "copc": ev.metrics.copc(),
            "mean_pred": ev.metrics.summary()["mean_pred"],
            "mean_label": ev.metrics.summary()["mean_label"],
            "cumulative_auc": state.cumulative.auc(),
            "examples": len(examples),
            "devices": devices,
            "train_examples_per_sec": len(examples) / max(tr.seconds, 1e-9),
            "eval_examples_per_sec": len(examples) / max(ev.seconds, 1e-9),
            "parse_lines_per_sec": report.lines / max(parse_s, 1e-9),
            "batch_seconds": tr.batch_seconds,
            "host_seconds": tr.host_seconds,
            "push_seconds": tr.push_seconds,
            "train_seconds": tr.seconds,
            "malformed_lines": report.malformed,
            "ids_over_max_len": records.ids_over_max_len(examples, spec),
            "ignored_tokens": report.ignored_tokens,
            **stats,
            **records.truth_metrics(part, examples.labels),
            "source_warnings": seen.reports[reported:],
        }
        reported = len(seen.reports)
        # The record goes out before the checkpoint commits: a run killed (or whose
        # checkpoint fails) in between retrains this partition, and drops the stale line.
        if workers.is_first:
            _append_record(metrics_path, record)
        t0 = time.perf_counter()
        if ckpt is not None:  # worker 0 saves while the others wait (no push lands mid-save)

            def save(part=part):
                with _one_line_if_not_written(ckpt, state.partitions, part.key):
                    ckpt.save(state.partitions, state.params, state.opt_state, store,
                              state.cursor, state.cumulative, dataclasses.asdict(cfg),
                              base=part.is_day_start, skipped=state.skipped,
                              run_id=run_id)  # fmt: skip

            workers.on_first(save)
            _tag(workers, store, spec, f"{run_id}/{state.partitions}")
        record["checkpoint_seconds"] = time.perf_counter() - t0  # after the file's line
        if writer is not None and workers.is_first:
            for tag, v in records.scalar_tags(record).items():
                writer.add_scalar(tag, v, state.partitions)
        if on_partition_end is not None:
            on_partition_end(part, state, record)

    # ------------------------------------------------------------------ summary
    if state.partitions == partitions_before:
        raise NothingToTrain(
            f"no ready partition under {data_root}"
            + (f" after {state.cursor}" if state.cursor else "")
            + " (a partition is a YYYYMMDD/HH folder with a _SUCCESS file)"
        )
    summary = {
        "partitions": state.partitions,
        "cursor": state.cursor,
        "cumulative_auc": state.cumulative.auc(),
        "malformed_lines": malformed_total,
        "devices": devices,
        "seconds": time.perf_counter() - t_run,
        "metrics_file": metrics_path,
        "params_sha256": _digest(state.params),
        **records.table_totals(store.stats()),
    }
    if writer is not None:
        writer.close()
    return summary


class _SourceState(NamedTuple):
    """The source's skipped keys and reports as it yielded a partition (a source that reads
    ahead has moved on by the time that partition is recorded)."""

    skipped: set[str]
    reports: list[str]


def _read(parts, cfg: TrainConfig, source: PartitionSource, ahead: bool):
    """(partition, examples, report, parse seconds, source state) for each partition;
    ``ahead``: the next one is found and read in a thread while the caller trains on this
    one (the source's waits for late hours then overlap training too)."""

    def fetch():
        part = next(parts, None)
        if part is None:
            return None
        seen = _SourceState(set(source.skipped), list(source.reports))
        t0 = time.perf_counter()
        examples, report = read_partition(cfg, part)
        return part, examples, report, time.perf_counter() - t0, seen

    if not ahead:
        while (item := fetch()) is not None:
            yield item
        return
    # A daemon thread, not an executor: a source waiting for a late hour must not hold up
    # the caller's exit on an error.
    out: queue.Queue = queue.Queue(maxsize=1)
    stop = threading.Event()

    def run():
        try:
            while not stop.is_set():
                item = fetch()
                out.put((item, None))
                if item is None:
                    return
        except BaseException as e:  # raised in the caller, in order
            out.put((None, e))

    threading.Thread(target=run, name="read-ahead", daemon=True).start()
    try:
        while True:
            item, error = out.get()
            if error is not None:
                raise error
            if item is None:
                return
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            out.get_nowait()  # let a thread blocked on a full queue see the stop


def _new_run_id(workers: Workers) -> str:
    """Worker 0's random id, on every worker (their clients fence with tags naming it)."""
    mine = np.frombuffer(uuid.uuid4().bytes[:8], np.int32)
    return workers.allreduce_sum(mine if workers.is_first else 0 * mine).tobytes().hex()[:12]


def _tag(workers: Workers, store: hs.Store, spec: FeatureSpec, tag: str) -> None:
    """Worker 0 tags the tables; then every other worker's client expects that tag (its
    calls are refused, as worker 0's, once another run takes the store over)."""

    def set_tags():
        for t in spec.tables:
            store.set_tag(t.name, tag)

    workers.on_first(set_tags)
    if not workers.is_first:
        for t in spec.tables:
            store.fence(t.name, tag)


def _refuse_foreign_rows(store: hs.Store, spec: FeatureSpec) -> None:
    """A run without a checkpoint starts from empty tables: rows already in the store were
    written by something else (another run, or this one killed before its first checkpoint)
    and would be trained on top of without a word."""
    stats = store.stats()
    full = {t.name: stats[t.name] for t in spec.tables
            if stats[t.name]["rows"] or stats[t.name]["pending"]}  # fmt: skip
    if full:
        held = "; ".join(f"{n}: {s['rows']:,} rows, {s['pending']:,} pending"
                         + (f" (tag {s['tag']})" if s.get("tag") else "")
                         for n, s in full.items())  # fmt: skip
        raise workdir_lib.RunError(
            f"the store already holds rows this run did not write ({held}) and the workdir "
            "has no checkpoint: start with empty tables (restart the shards), or pass "
            "adopt_store=True (--adopt_store) to train on top of them"
        )


def _digest(params) -> str:
    """sha256 of the dense parameters (workers in sync have equal digests)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()


def _merge(workers: Workers, m: BinaryMetrics) -> BinaryMetrics:
    """The metric state summed over all workers (exact: histograms and sums add)."""
    if workers.count == 1:
        return m
    fields = {k: np.asarray(v, np.float64) for k, v in dataclasses.asdict(m).items()}
    total = workers.allreduce_sum(fields)
    return BinaryMetrics(**{k: (v if v.ndim else float(v)) for k, v in total.items()})
