"""The per-partition metrics record: what goes in it beyond the pass metrics (the
generator's ceilings, the store's totals, IDs over a slot's length), the line a person
reads, the prediction dump, and one line per partition in metrics.jsonl."""

from __future__ import annotations

import json
import math
import os

import numpy as np

from jaxstream.config import TrainConfig
from jaxstream.data.examples import Examples
from jaxstream.features import FeatureSpec
from jaxstream.metrics import BinaryMetrics
from jaxstream.stream import Partition, key_time


def ids_over_max_len(examples: Examples, spec: FeatureSpec) -> int:
    """IDs beyond their slot's ``max_len`` (not trained on: counted, never dropped silently)."""
    return int(sum(np.maximum(np.diff(examples.slot_offsets[s.name]) - s.max_len, 0).sum()
                   for s in spec.slots))  # fmt: skip


def dump_predictions(workdir, part, examples, report, workers, predictions) -> None:
    """Paddle's dump_fields: each example's file, line, label and progressive prediction,
    one TSV per partition (and worker), written whole or not at all."""
    lo, hi = workers.slice(len(examples))
    preds = np.concatenate(predictions) if predictions else np.empty(0, np.float32)
    out_dir = os.path.join(workdir, "predictions")
    os.makedirs(out_dir, exist_ok=True)
    suffix = f".worker-{workers.index}" if workers.count > 1 else ""
    path = os.path.join(out_dir, part.key.replace("/", "-") + suffix + ".tsv")
    write_scores(path, examples, report, preds, lo, hi, sep="\t")


def write_scores(path, examples, report, predictions, lo=0, hi=None, sep=",") -> None:
    """One line per example in input order: its file, line, label and prediction (float32,
    exactly), with a header; written under a temporary name, then renamed."""
    hi = len(examples) if hi is None else hi
    files = np.repeat([f for f, _ in report.files], [n for _, n in report.files])[lo:hi]
    rows = zip(files, examples.line_numbers[lo:hi], examples.labels[lo:hi], predictions,
               strict=True)  # fmt: skip
    with open(path + ".tmp", "w") as f:
        f.write(sep.join(("file", "line", "label", "prediction")) + "\n")
        for name, line, label, p in rows:
            f.write(f"{name}{sep}{line}{sep}{label:.0f}{sep}{p:.9g}\n")
    os.replace(path + ".tmp", path)


def truth_metrics(part: Partition, labels: np.ndarray) -> dict[str, float]:
    path = os.path.join(part.path, "truth.npz")
    if not os.path.exists(path):
        return {}
    truth = np.load(path)
    if len(truth["p_true"]) != len(labels):  # malformed lines were dropped: no alignment
        return {}
    out = {}
    for name, key in (("oracle_auc", "p_true"), ("seen_k_auc", "p_seen"), ("bayes_auc", "p_bayes")):
        if key not in truth:
            continue
        m = BinaryMetrics()
        m.update(labels, truth[key])
        out[name] = m.auc()
    return out


_CEILINGS = (("bayes_auc", "bayes-ceiling"), ("oracle_auc", "oracle"))


def partition_line(record: dict) -> str:
    """One partition's metrics record as the line a person reads."""
    r = record
    line = (f"[{r['partition']}] auc {r['progressive_auc']:.4f} (train {r['train_auc']:.4f})"
            f"  logloss {r['logloss']:.4f}  rows {r['table_rows']:,}"
            + (f" ({r['disk_rows']:,} on disk)" if "disk_rows" in r else "")
            + f"  {r['train_examples_per_sec']:,.0f} ex/s")  # fmt: skip
    if "checkpoint_seconds" in record:
        line += f"  ckpt {record['checkpoint_seconds']:.2f}s"
    return line + "".join(f"  {name} {record[k]:.4f}" for k, name in _CEILINGS if k in record)


def truncate_metrics(path: str, cursor: str | None, skipped: list[str] = ()) -> list[str]:
    """At a run's start: keep one line per partition the checkpoint trained (up to the
    cursor, less those skipped; none when no checkpoint was committed) and drop the rest
    (lines a run that was killed, or whose checkpoint failed, wrote for partitions it had
    not checkpointed: they are trained again). Returns the dropped lines' partitions."""
    if not os.path.exists(path):
        return []
    skipped = set(skipped)
    kept, seen, dropped = [], set(), []
    with open(path) as f:
        for line in f:
            try:
                p = json.loads(line)["partition"]
            except (ValueError, KeyError):  # a line cut short by a kill
                dropped.append("an unreadable line")
                continue
            committed = cursor is not None and key_time(p) <= key_time(cursor)
            if committed and p not in skipped and p not in seen:
                seen.add(p)
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped.append(p)
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


def table_totals(stats: dict[str, dict]) -> dict[str, int | float]:
    tier = {}
    if any("disk_rows" in s for s in stats.values()):  # a disk tier: how much is on disk
        tier = {"disk_rows": sum(s.get("disk_rows", 0) for s in stats.values()),
                "disk_bytes": sum(s.get("disk_bytes", 0) for s in stats.values())}  # fmt: skip
    return {
        **tier,
        "table_rows": sum(s["rows"] for s in stats.values()),
        "pending": sum(s["pending"] for s in stats.values()),
        "admitted": sum(s["admitted"] for s in stats.values()),
        "evicted": sum(s["evicted"] for s in stats.values()),
        "table_bytes": sum(s["bytes"] for s in stats.values()),
        # cumulative; summed over shards (shards grow in parallel)
        "table_growth_seconds": sum(s.get("growth_seconds", 0.0) for s in stats.values()),
    }


# TensorBoard tags: a group per kind of number, so the dashboard reads eval / train / store /
# data / perf apart. Fields not named here go by their suffix (perf) or to "other/".
_TAGS = {
    "progressive_auc": "eval/auc", "logloss": "eval/logloss", "copc": "eval/copc",
    "mean_pred": "eval/mean_pred", "mean_label": "eval/mean_label",
    "cumulative_auc": "eval/cumulative_auc", "oracle_auc": "eval/oracle_auc",
    "seen_k_auc": "eval/seen_k_auc", "bayes_auc": "eval/bayes_auc",
    "train_auc": "train/auc", "examples": "train/examples",
    "malformed_lines": "data/malformed_lines", "ids_over_max_len": "data/ids_over_max_len",
    "ignored_tokens": "data/ignored_tokens",
    "table_rows": "store/rows", "pending": "store/pending", "admitted": "store/admitted",
    "evicted": "store/evicted", "table_bytes": "store/bytes",
    "disk_rows": "store/disk_rows", "disk_bytes": "store/disk_bytes",
    "displaced_pending": "store/displaced_pending", "devices": "perf/devices",
}  # fmt: skip


def scalar_tags(record: dict) -> dict[str, float]:
    """The record's numbers under their TensorBoard tags (``eval/auc``, ``store/rows``,
    ``perf/train_examples_per_sec``, ...)."""
    out = {}
    for k, v in record.items():
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isnan(v):
            continue
        perf = k.endswith(("_per_sec", "_seconds"))
        out[_TAGS.get(k) or (f"perf/{k}" if perf else f"other/{k}")] = v
    return out


def tensorboard_writer(cfg: TrainConfig, workdir: str):
    if not cfg.tensorboard:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ValueError("tensorboard=True needs the [tensorboard] extra (tensorboardX)") from None
    return SummaryWriter(os.path.join(workdir, "tb"))
