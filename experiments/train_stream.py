"""Streaming training: evaluate each partition, train on it, record metrics.

With no flags it generates a small stream in a temporary directory and trains on it. Every
field of ``jaxstream.TrainConfig`` is a flag of the same name (``--help`` lists them with
their defaults); the rest below say where the store runs and how workers meet.

  python experiments/train_stream.py
  python experiments/train_stream.py --data_root=/data/criteo_stream --workdir=/tmp/run \\
      --admission=count_filter:3 --eviction=unseen:72,max_rows:50000000 --wait
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile

from absl import app, flags

import config_flags
import console
from jaxstream import config as config_lib
from jaxstream import distributed, records, train
from jaxstream import workdir as workdir_lib

F = flags.FLAGS
config_flags.define_flags(config_lib.get_config(), groups=config_lib.FIELD_GROUPS)
__doc__ += "\n" + config_flags.groups_help(config_lib.FIELD_GROUPS)  # --help shows them grouped
flags.DEFINE_string("workdir", None, "Where metrics (and checkpoints) go; default: a temp dir.")
flags.DEFINE_list("store_addresses", [], "Shard servers host:port,... (default: in process).")
flags.DEFINE_string("store_token_file", None, "Bearer token for the shard servers.")
flags.DEFINE_string("store_root_cert", None, "PEM root certificate: talk TLS to the shards.")
flags.DEFINE_string("store_client_cert", None, "PEM client certificate (mutual TLS).")
flags.DEFINE_string("store_client_key", None, "PEM key of --store_client_cert.")
flags.DEFINE_string(
    "store_snapshot_root",
    None,
    "Where the shard servers' --snapshot_root is on this machine (a shared filesystem): "
    "the servers write the store's checkpoints there, so --workdir must lie under it.",
)
flags.DEFINE_integer("num_workers", 1, "Trainer processes sharing the store (jax.distributed).")
flags.DEFINE_integer("worker_index", 0, "This trainer's index among --num_workers.")
flags.DEFINE_string("coordinator", None, "host:port of the jax.distributed coordinator.")
flags.DEFINE_boolean("smoke", False, "Tiny stream and model: seconds.")
flags.DEFINE_boolean(
    "adopt_store",
    False,
    "Train on top of rows already in the store "
    "though the workdir has no checkpoint (default: refuse).",
)
flags.DEFINE_boolean(
    "start_over",
    False,
    "Move the workdir's history (checkpoints, metrics) "
    "aside into workdir/history-<time>/ and train from the first partition.",
)


@contextlib.contextmanager
def _progress(desc: str, total: int):
    with console.progress(desc, total, "ex") as update:
        yield lambda batches, examples: update(examples)


def main(argv):
    del argv
    console.quiet_logs()  # this script prints its own lines: hourly metrics, a summary
    base = config_lib.smoke_config() if F.smoke else config_lib.get_config()
    try:  # the whole config, before any data is generated or read
        cfg = config_flags.apply_flags(base)
        config_lib.check(cfg)
        _check_workers(cfg)
    except (ValueError, flags.ValidationError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    workers = None
    if F.num_workers > 1:  # before anything touches a JAX backend
        try:
            workers = distributed.initialize(F.coordinator, F.num_workers, F.worker_index)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
    temporary = F.workdir is None
    workdir = F.workdir or tempfile.mkdtemp(prefix="jaxstream_")
    store = _remote_store(cfg, workdir) if F.store_addresses else None
    first = F.worker_index == 0
    if first:
        data = cfg.data_root or os.path.join(workdir, "data")
        if cfg.data_root is None and not os.path.isdir(data):
            data += (f" (generating {cfg.synthetic.hours} h x {cfg.synthetic.rows_per_hour:,} "
                     "rows first)")  # fmt: skip
        print(
            f"workdir {os.path.abspath(workdir)}; stream {data}; model {cfg.model}, "
            f"admission {cfg.admission}, eviction {cfg.eviction or 'none'}",
            flush=True,
        )
    if F.start_over and first:
        moved = workdir_lib.move_history_aside(workdir)
        if moved:
            print(f"moved the previous history to {moved}", flush=True)
    try:
        summary = _train(cfg, workdir, store, workers, first)
    except workdir_lib.RunError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if temporary:  # nothing in it worth keeping
            shutil.rmtree(workdir, ignore_errors=True)
        sys.exit(1)
    if first:
        print("summary: " + json.dumps(summary), flush=True)
    if first and temporary:
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(workdir) for f in fs)
        print(f"the run's files ({size / 2**20:,.0f} MB: metrics.jsonl, checkpoints, the "
              f"generated stream) stay in {workdir}: remove it when done, or choose the place "
              "with --workdir", flush=True)  # fmt: skip
    if workers is not None:
        with open(os.path.join(workdir, f"worker-{F.worker_index}.json"), "w") as f:
            json.dump(summary, f)


def _check_workers(cfg) -> None:
    if F.num_workers < 1 or not 0 <= F.worker_index < F.num_workers:
        raise ValueError(f"--worker_index={F.worker_index} --num_workers={F.num_workers}: the "
                         "index must be in [0, num_workers)")  # fmt: skip
    if F.num_workers > 1 and not F.store_addresses:
        raise ValueError(f"--num_workers={F.num_workers} needs --store_addresses: the workers "
                         "share one store (a store in each would see only its own worker's "
                         "updates)")  # fmt: skip
    if F.num_workers > 1 and cfg.pass_batches:
        raise ValueError(f"--pass_batches={cfg.pass_batches}: pass mode trains in one process "
                         "(use --pass_batches=0 with several workers)")  # fmt: skip


def _remote_store(cfg, workdir):
    from hoststore.rpc import ShardedStore, paths  # gRPC is imported only for a remote store

    root = F.store_snapshot_root
    try:
        if cfg.checkpoint and root is None:
            raise ValueError(
                "--store_snapshot_root is needed with --store_addresses: the "
                "shard servers write the checkpoints under their --snapshot_root"
            )
        if cfg.checkpoint:
            paths.to_root(root, os.path.join(workdir, "checkpoints"))
        read = lambda f, mode="r": open(f, mode).read() if f else None  # noqa: E731
        token = (read(F.store_token_file) or "").strip() or None
        if F.store_token_file and token is None:  # blank never means "no authentication"
            raise ValueError(f"--store_token_file {F.store_token_file} is empty: refusing to "
                             "connect without the token")  # fmt: skip
        return ShardedStore(F.store_addresses, token=token,
                            root_certificates=read(F.store_root_cert, "rb"),
                            private_key=read(F.store_client_key, "rb"),
                            certificate_chain=read(F.store_client_cert, "rb"),
                            snapshot_root=root)  # fmt: skip
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if F.workdir is None:  # the temporary one made for this run
            shutil.rmtree(workdir, ignore_errors=True)
        sys.exit(2)


def _train(cfg, workdir, store, workers, first):
    return train.train_and_evaluate(
        cfg, workdir, store=store, workers=workers, adopt_store=F.adopt_store,
        on_resume=lambda st: first and print(
            f"resumed from checkpoint {st.partitions} after partition {st.cursor}", flush=True),
        on_partition_end=lambda part, st, rec: first and print(records.partition_line(rec),
                                                               flush=True),
        progress=_progress if cfg.progress and first else None,
    )  # fmt: skip


if __name__ == "__main__":
    app.run(main)
