"""End to end: the streaming trainer on a generated 3-partition stream, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hoststore as hs
from hoststore.store import LocalStore
from jaxstream import config, train
from jaxstream.data.synthetic import StreamConfig, generate
from tests.conftest import metric_lines, smoke_stream

REQUIRED = {
    "partition",
    "progressive_auc",
    "train_auc",
    "logloss",
    "examples",
    "train_examples_per_sec",
    "table_rows",
    "admitted",
    "evicted",
    "malformed_lines",
}


def _cfg(tmp_path, **kw):
    root = str(tmp_path / "data")
    stream = StreamConfig(hours=3, rows_per_hour=3000, max_vocab=3000)
    generate(root, stream)
    # One malformed line in the second partition: counted, skipped, the rest trained on.
    with open(os.path.join(root, "20260101", "01", "part-00000"), "a") as f:
        f.write("not\ta\tcriteo\tline\n")
    base = dataclasses.replace(config.smoke_config(), data_root=root, synthetic=stream)
    return dataclasses.replace(base, **kw)


def test_three_partitions_end_to_end(tmp_path):
    cfg = _cfg(tmp_path, admission="count_filter:2", eviction="unseen:1", shrink_every="partition")
    summary = train.train_and_evaluate(cfg, str(tmp_path / "work"))
    lines = [json.loads(x) for x in open(summary["metrics_file"])]
    assert [x["partition"] for x in lines] == ["20260101/00", "20260101/01", "20260101/02"]
    for x in lines:
        assert REQUIRED <= set(x)
    assert [x["malformed_lines"] for x in lines] == [0, 1, 0]
    assert [x["examples"] for x in lines] == [3000, 3000, 3000]
    assert summary["malformed_lines"] == 1
    assert lines[0]["progressive_auc"] < 0.6  # an untrained model knows nothing
    assert lines[-1]["progressive_auc"] > lines[0]["progressive_auc"] + 0.05
    assert lines[-1]["train_auc"] > 0.55
    assert summary["evicted"] > 0 and summary["pending"] > 0
    assert lines[-1]["table_rows"] == summary["table_rows"]
    assert 0.4 < lines[-1]["oracle_auc"] <= 1.0
    assert 0.4 < lines[-1]["bayes_auc"] < lines[-1]["oracle_auc"]
    assert lines[-1]["table_growth_seconds"] > 0  # tables start at 1024 rows and grow


class TinyTower(nnx.Module):
    """A custom model: the documented signature (pooled embeddings, dense) -> logits."""

    def __init__(self, slot_dims, num_dense, rngs):
        self.w = nnx.Linear(sum(slot_dims) + num_dense, 1, rngs=rngs)

    def __call__(self, embeddings, dense):
        return self.w(jnp.concatenate([*embeddings, dense], axis=-1))[:, 0] * 2.0


def test_custom_model_plugs_in(tmp_path):
    cfg = _cfg(tmp_path, max_partitions=2)
    spec = train.feature_spec(cfg)
    model = TinyTower(spec.slot_dims(), spec.num_dense, nnx.Rngs(0))
    seen = []
    summary = train.train_and_evaluate(
        cfg,
        str(tmp_path / "work"),
        model=model,
        on_partition_end=lambda part, state, rec: seen.append((part.key, rec["train_auc"])),
    )
    assert summary["partitions"] == 2 and [k for k, _ in seen] == ["20260101/00", "20260101/01"]


def test_cli_smoke_prints_its_own_lines_only(tmp_path):
    """No --workdir: a temporary one, stated in the first and last lines; nothing but the
    script's own lines on stdout and stderr (no library logs)."""
    out = subprocess.run(
        [sys.executable, "experiments/train_stream.py", "--smoke", "--max_partitions=2",
         "--model=deepfm", "--admission=count_filter:2", "--cvm", "--table_capacity=50000"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TMPDIR": str(tmp_path)},
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert out.stderr.strip() == "" and len(lines) == 5, out.stdout + out.stderr
    assert lines[0].startswith(f"workdir {tmp_path}") and lines[3].startswith("summary:")
    assert out.stdout.count("] auc ") == 2 and "remove it when done" in lines[4]
    (workdir,) = [p for p in tmp_path.iterdir() if p.name.startswith("jaxstream_")]
    assert str(workdir) in lines[4]
    assert len(open(workdir / "metrics.jsonl").readlines()) == 2


def test_table_capacity_is_reserved_up_front():
    cfg = dataclasses.replace(config.smoke_config(), table_capacity=50_000)
    store = LocalStore(train.feature_spec(cfg).tables)
    assert store.stats()["embedding"]["capacity"] == 50_000


def test_bad_policy_strings_name_the_problem():
    with pytest.raises(ValueError, match="unknown admission 'often'"):
        hs.admission.parse("often")
    with pytest.raises(ValueError, match="bad eviction part 'forever:1'"):
        hs.eviction.parse("unseen:3,forever:1")


def test_training_through_a_two_shard_grpc_store_equals_in_process(tmp_path, cluster):

    cfg = smoke_stream(str(tmp_path / "data"), hours=2, checkpoint=False)
    local = train.train_and_evaluate(cfg, str(tmp_path / "local"))
    remote_store = cluster.connect(token=cluster.token)
    remote = train.train_and_evaluate(cfg, str(tmp_path / "remote"), store=remote_store)
    lines = [metric_lines(s["metrics_file"]) for s in (local, remote)]
    assert lines[0] == lines[1] and len(lines[0]) == 2


def test_library_api_two_tables_per_slot_dims_and_an_optax_chain(tmp_path, capsys):
    """features, dense_optimizer and model given as objects; the library prints nothing."""
    import optax

    from jaxstream import models
    from jaxstream.data import readers
    from jaxstream.features import FeatureSpec, SlotSpec
    from jaxstream.serving import Predictor

    cfg = _cfg(tmp_path)
    small = hs.TableConfig("small", 4, optimizer=hs.optimizers.adagrad(0.05))
    big = hs.TableConfig("big", 12, optimizer=hs.optimizers.sgd(0.1), admission=hs.count_filter(2))
    slots = tuple(SlotSpec(s, "small" if i < 13 else "big") for i, s in
                  enumerate(readers.CRITEO_SLOTS))  # fmt: skip
    spec = FeatureSpec(slots, (small, big), readers.CRITEO_DENSE)
    schedule = optax.linear_schedule(1e-2, 1e-3, transition_steps=20)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    model = models.build("dnn", spec.slot_dims(), spec.num_dense, 0, hidden=(16,))
    summary = train.train_and_evaluate(cfg, str(tmp_path / "w"), model=model, features=spec,
                                       dense_optimizer=tx)  # fmt: skip
    assert capsys.readouterr().out == ""
    lines = [json.loads(x) for x in open(summary["metrics_file"])]
    assert len(lines) == 3 and lines[-1]["progressive_auc"] > 0.55
    # Both tables grew, each with its own dim and policy.
    store_rows = summary["table_rows"]
    assert store_rows > 0 and summary["pending"] > 0  # the big table's count_filter:2
    predictor = Predictor(str(tmp_path / "w"), model=models.build("dnn", spec.slot_dims(),
                          spec.num_dense, 0, hidden=(16,)), features=spec)  # fmt: skip
    assert set(predictor.tables) == {"small", "big"}
    assert predictor.tables["big"].config.dim == 12


def test_an_in_process_run_does_not_import_grpc():
    code = ("import sys, jaxstream, hoststore\n"
            "from jaxstream import checkpoint, serving, train\n"
            "assert 'grpc' not in sys.modules, 'grpc imported'\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_prediction_dumps_reference_every_example_and_match_the_progressive_auc(tmp_path):
    from jaxstream.metrics import BinaryMetrics

    cfg = _cfg(tmp_path, dump_predictions=True, checkpoint=False)
    summary = train.train_and_evaluate(cfg, str(tmp_path / "w"))
    records = [json.loads(x) for x in open(summary["metrics_file"])]
    for rec in records:
        day, hour = rec["partition"].split("/")
        path = tmp_path / "w" / "predictions" / f"{day}-{hour}.tsv"
        rows = [line.split("\t") for line in path.read_text().splitlines()[1:]]
        assert len(rows) == rec["examples"]
        part_lines = (tmp_path / "data" / day / hour / "part-00000").read_text().splitlines()
        m = BinaryMetrics()
        labels = np.array([float(r[2]) for r in rows])
        m.update(labels, np.array([r[3] for r in rows], np.float32))  # float32-exact text
        assert abs(m.auc() - rec["progressive_auc"]) < 1e-9
        for name, line, label, _ in rows[:50]:  # each row points at its line in its file
            assert name == "part-00000" and part_lines[int(line) - 1].split("\t")[0] == label


_DEVICES_RUN = """
import dataclasses, json, sys
from jaxstream import train
from tests.conftest import metric_lines, smoke_stream
cfg = smoke_stream(sys.argv[1] + "/data", hours=3, checkpoint=False)  # the same stream
out = {}
# two of the four devices, then all of them, then pass mode on two
for name, n, passes in (("2", 2, 0), ("0", 0, 0), ("pass", 2, 3)):
    run = dataclasses.replace(cfg, devices=n, pass_batches=passes)
    s = train.train_and_evaluate(run, f"{sys.argv[2]}/{name}")
    out[name] = {"devices": s["devices"], "lines": metric_lines(s["metrics_file"])}
print(json.dumps(out))
"""


@pytest.mark.parametrize("pass_batches", [0, 2])
def test_training_on_the_batches_evaluation_kept_changes_no_result(tmp_path, pass_batches):
    """A partition's training pass reuses the batches its evaluation pass built (within
    keep_batches_mb): the same metrics and tables as building them again, every field."""
    data = str(tmp_path / "data")
    cfg = smoke_stream(data, hours=3, checkpoint=False, pass_batches=pass_batches)
    runs = [train.train_and_evaluate(dataclasses.replace(cfg, keep_batches_mb=mb),
                                     str(tmp_path / str(mb))) for mb in (0, 256)]  # fmt: skip
    keys = ("partition", "progressive_auc", "train_auc", "logloss", "copc", "table_rows",
            "admitted", "cumulative_auc")  # fmt: skip
    a, b = (metric_lines(r["metrics_file"], keys) for r in runs)
    assert a == b and len(a) == 3


def test_every_local_device_trains_data_parallel_with_the_same_results(tmp_path):
    """4 forced CPU devices: the run reports how many trained, and its metrics match the
    one-device run (the batch is split over the devices inside the jitted step; XLA sums
    the gradients); so does pass mode on 2 of them (the pass's rows on each)."""
    data = str(tmp_path / "data")
    cfg = smoke_stream(data, hours=3, checkpoint=False)
    one = train.train_and_evaluate(cfg, str(tmp_path / "one"))
    assert one["devices"] == 1
    proc = subprocess.run(
        [sys.executable, "-c", _DEVICES_RUN, str(tmp_path / "sub"), str(tmp_path)],
        capture_output=True,
        text=True, timeout=300, cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
        env={**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = json.loads(proc.stdout.splitlines()[-1])
    want = metric_lines(one["metrics_file"])
    for n, devices in (("2", 2), ("0", 4), ("pass", 2)):
        assert runs[n]["devices"] == devices
        for a, b in zip(runs[n]["lines"], want, strict=True):
            assert a["partition"] == b["partition"] and a["table_rows"] == b["table_rows"]
            assert abs(a["progressive_auc"] - b["progressive_auc"]) < 0.01


def test_reading_ahead_yields_the_same_partitions_and_raises_in_order(tmp_path):
    """The next partition is found and read in a thread while this one trains: the same
    items in the same order as reading in turn, a source error raised after the items
    before it, and a consumer that stops early is not held up."""
    from jaxstream.stream import PartitionSource, SourceConfig

    cfg = smoke_stream(str(tmp_path / "data"), hours=3)

    def run(ahead, fail_after=None):
        source = PartitionSource(SourceConfig(cfg.data_root))

        def parts():
            for i, p in enumerate(source):
                if i == fail_after:
                    raise RuntimeError("the source failed")
                yield p

        return train._read(parts(), cfg, source, ahead)

    def keys(items):
        return [(p.key, len(ex), rep.lines, sorted(seen.skipped))
                for p, ex, rep, _, seen in items]  # fmt: skip

    assert keys(run(True)) == keys(run(False)) and len(keys(run(True))) == 3
    got = run(True, fail_after=1)
    assert next(got)[0].key == "20260101/00"
    with pytest.raises(RuntimeError, match="the source failed"):
        next(got)
    early = run(True)
    next(early)
    early.close()


class ShrinkCounter(LocalStore):
    def __init__(self):
        super().__init__()
        self.shrinks = 0

    def shrink(self):
        self.shrinks += 1
        return super().shrink()


@pytest.mark.parametrize(
    "shrink_every, first_run, want",
    [
        ("day", None, [2]),  # one run: at 20260102/00 and at 20260103/05
        ("day", 2, [0, 2]),  # stopped before the first boundary
        ("day", 3, [1, 1]),  # resumed after it: not shrunk again for the same day
        ("partition", None, [4]),
    ],
)  # fmt: skip
def test_a_day_boundary_shrinks_once_whatever_the_run_boundaries(tmp_path, shrink_every,
                                                                  first_run, want):  # fmt: skip
    """The daily shrink (Paddle's shrink after a day's passes) runs once per new day: not
    at a run's first partition, not again when a run resumes after the boundary."""
    root = tmp_path / "data"
    generate(str(root), StreamConfig(hours=4, rows_per_hour=500, max_vocab=1000))
    for h, key in zip(("00", "01", "02", "03"),
                      ("20260101/22", "20260101/23", "20260102/00", "20260103/05")):  # fmt: skip
        os.makedirs(root / key.split("/")[0], exist_ok=True)
        os.rename(root / "20260101" / h, root / f"{key}.tmp")
    for key in ("20260101/22", "20260101/23", "20260102/00", "20260103/05"):
        os.rename(root / f"{key}.tmp", root / key)
    cfg = dataclasses.replace(config.smoke_config(), data_root=str(root), synthetic=None,
                              shrink_every=shrink_every)  # fmt: skip
    got = []
    for limit in [first_run, None] if first_run else [None]:
        store = ShrinkCounter()
        train.train_and_evaluate(dataclasses.replace(cfg, max_partitions=limit),
                                 str(tmp_path / "w"), store=store)  # fmt: skip
        got.append(store.shrinks)
    assert got == want
