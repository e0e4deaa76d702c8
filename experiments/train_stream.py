"""Streaming training: evaluate each partition, train on it, record metrics.

With no flags it generates a small stream in a temporary directory and trains on it.

  python experiments/train_stream.py
  python experiments/train_stream.py --data_root=/data/criteo_stream --workdir=/tmp/run \
      --admission=count_filter:3 --eviction=unseen:72,max_rows:50000000 --wait
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile

from absl import app, flags

from hoststore.rpc import ShardedStore
from jaxstream import config as config_lib
from jaxstream import distributed, train

F = flags.FLAGS
flags.DEFINE_string("data_root", None, "Stream root (ROOT/YYYYMMDD/HH/); default: generate one.")
flags.DEFINE_enum("format", "criteo", ["criteo", "avazu", "slot"], "Input format.")
flags.DEFINE_list("slot_names", [], "For --format=slot: slot numbers to read.")
flags.DEFINE_string("model", None, "lr, dnn, wide_deep, deepfm, dcn_v2 or dlrm.")
flags.DEFINE_string("workdir", None, "Where metrics (and checkpoints) go; default: a temp dir.")
flags.DEFINE_string("metrics_file", None, "JSONL metrics path; default: workdir/metrics.jsonl.")
flags.DEFINE_integer("batch_size", None, "Examples per step.")
flags.DEFINE_integer("embedding_dim", None, "Embedding dimension of every slot.")
flags.DEFINE_string("admission", None, "always | probability:P | count_filter:N | show_click:T")
flags.DEFINE_string("eviction", None, "e.g. unseen:72,score:0.5,max_rows:1000000,decay:0.98")
flags.DEFINE_string("sparse_optimizer", None, "sgd, adagrad, rowwise_adagrad, paddle_adagrad, ...")
flags.DEFINE_float("sparse_learning_rate", None, "Sparse (store) learning rate.")
flags.DEFINE_string("dense_optimizer", None, "Any optax alias, e.g. adam, adagrad, sgd.")
flags.DEFINE_float("dense_learning_rate", None, "Dense learning rate.")
flags.DEFINE_integer("max_partitions", None, "Stop after this many partitions.")
flags.DEFINE_boolean("wait", None, "Keep polling for new partitions.")
flags.DEFINE_integer("staleness", None, "Pulls may run this many batches ahead of pushes (0, 1).")
flags.DEFINE_enum("shrink_every", None, ["day", "partition", "never"], "When to shrink.")
flags.DEFINE_boolean("checkpoint", None, "Checkpoint every partition and resume from workdir.")
flags.DEFINE_integer("store_shards", None, "In-process store shards per table (parallel).")
flags.DEFINE_integer("table_capacity", None, "Rows each table reserves up front.")
flags.DEFINE_boolean("tensorboard", None, "Also write TensorBoard scalars.")
flags.DEFINE_boolean("cvm", None, "Feed each ID's show/click counters to the model (CVM).")
flags.DEFINE_list("store_addresses", [], "Shard servers host:port,... (default: in process).")
flags.DEFINE_string("store_token_file", None, "Bearer token for the shard servers.")
flags.DEFINE_string("store_root_cert", None, "PEM root certificate: talk TLS to the shards.")
flags.DEFINE_integer("num_workers", 1, "Trainer processes sharing the store (jax.distributed).")
flags.DEFINE_integer("worker_index", 0, "This trainer's index among --num_workers.")
flags.DEFINE_string("coordinator", None, "host:port of the jax.distributed coordinator.")
flags.DEFINE_boolean("smoke", False, "Tiny stream and model: seconds.")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cfg = config_lib.smoke_config() if F.smoke else config_lib.get_config()
    overrides = {
        name: F[name].value
        for name in ("data_root", "format", "model", "metrics_file", "batch_size",
                     "embedding_dim", "admission", "eviction", "sparse_optimizer",
                     "sparse_learning_rate", "dense_optimizer", "dense_learning_rate",
                     "max_partitions", "wait", "staleness", "store_shards", "tensorboard", "cvm",
                     "table_capacity",
                     "shrink_every", "checkpoint")
        if F[name].present or (name == "format" and F[name].value != cfg.format)
    }  # fmt: skip
    if F.slot_names:
        overrides["slot_names"] = tuple(F.slot_names)
    cfg = dataclasses.replace(cfg, **overrides)
    workers = None
    if F.num_workers > 1:  # before anything touches a JAX backend
        workers = distributed.initialize(F.coordinator, F.num_workers, F.worker_index)
    workdir = F.workdir or tempfile.mkdtemp(prefix="jaxstream_")
    store = None
    if F.store_addresses:
        token = open(F.store_token_file).read().strip() if F.store_token_file else None
        cert = open(F.store_root_cert, "rb").read() if F.store_root_cert else None
        store = ShardedStore(F.store_addresses, token=token, root_certificates=cert)
    summary = train.train_and_evaluate(cfg, workdir, store=store, workers=workers)
    if workers is not None:
        with open(os.path.join(workdir, f"worker-{F.worker_index}.json"), "w") as f:
            json.dump(summary, f)


if __name__ == "__main__":
    app.run(main)
