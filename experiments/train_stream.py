"""Streaming training: evaluate each partition, train on it, record metrics.

With no flags it generates a small stream in a temporary directory and trains on it. Every
field of ``jaxstream.TrainConfig`` is a flag of the same name (``--help`` lists them with
their defaults); the rest below say where the store runs and how workers meet.

  python experiments/train_stream.py
  python experiments/train_stream.py --data_root=/data/criteo_stream --workdir=/tmp/run \
      --admission=count_filter:3 --eviction=unseen:72,max_rows:50000000 --wait
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile

from absl import app, flags
from absl import logging as absl_logging
from tqdm.auto import tqdm

import config_flags
from jaxstream import config as config_lib
from jaxstream import distributed, records, train
from jaxstream import workdir as workdir_lib

F = flags.FLAGS
config_flags.define_flags(config_lib.get_config())
flags.adopt_module_key_flags(config_flags)  # --help lists them with this script's flags
flags.DEFINE_string("workdir", None, "Where metrics (and checkpoints) go; default: a temp dir.")
flags.DEFINE_list("store_addresses", [], "Shard servers host:port,... (default: in process).")
flags.DEFINE_string("store_token_file", None, "Bearer token for the shard servers.")
flags.DEFINE_string("store_root_cert", None, "PEM root certificate: talk TLS to the shards.")
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
def _progress_bar(desc: str, total: int):
    with tqdm(total=total, desc=desc, unit="ex", leave=False, mininterval=2.0) as bar:
        yield lambda batches, examples: bar.update(examples)


def main(argv):
    del argv
    # Quiet by default: this script prints its own lines (the hourly metrics, a summary);
    # library logs (Orbax, JAX backend probing) show warnings only unless -v/--verbosity asks.
    level = logging.INFO if F["verbosity"].present and F.verbosity >= 0 else logging.WARNING
    logging.getLogger().setLevel(level)
    absl_logging.set_verbosity(absl_logging.INFO if level == logging.INFO else absl_logging.WARNING)
    base = config_lib.smoke_config() if F.smoke else config_lib.get_config()
    try:  # the whole config, before any data is generated or read
        cfg = config_flags.apply_flags(base)
        config_lib.check(cfg)
    except (ValueError, flags.ValidationError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    workers = None
    if F.num_workers > 1:  # before anything touches a JAX backend
        workers = distributed.initialize(F.coordinator, F.num_workers, F.worker_index)
    workdir = F.workdir or tempfile.mkdtemp(prefix="jaxstream_")
    store = None
    if F.store_addresses:
        from hoststore.rpc import ShardedStore  # gRPC is imported only for a remote store

        token = open(F.store_token_file).read().strip() if F.store_token_file else None
        cert = open(F.store_root_cert, "rb").read() if F.store_root_cert else None
        store = ShardedStore(F.store_addresses, token=token, root_certificates=cert)
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
        sys.exit(1)
    if first:
        print("summary: " + json.dumps(summary), flush=True)
    if workers is not None:
        with open(os.path.join(workdir, f"worker-{F.worker_index}.json"), "w") as f:
            json.dump(summary, f)


def _train(cfg, workdir, store, workers, first):
    return train.train_and_evaluate(
        cfg, workdir, store=store, workers=workers, adopt_store=F.adopt_store,
        on_resume=lambda st: first and print(
            f"resumed from checkpoint {st.partitions} after partition {st.cursor}", flush=True),
        on_partition_end=lambda part, st, rec: first and print(records.partition_line(rec),
                                                               flush=True),
        progress=_progress_bar if cfg.progress and first and sys.stderr.isatty() else None,
    )  # fmt: skip


if __name__ == "__main__":
    app.run(main)
