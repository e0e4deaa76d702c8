"""2 store shards x 2 trainer processes on loopback, dense parameters kept in sync by
jax.distributed (gloo): the way experiments/launch_local.py runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.timeout(600)
def test_two_shards_two_workers(tmp_path):
    work = str(tmp_path / "run")
    out = subprocess.run(
        [sys.executable, "experiments/launch_local.py", "--num_shards=2", "--num_workers=2",
         f"--workdir={work}", "--", "--smoke", "--staleness=0", "--admission=count_filter:2"],
        cwd=REPO, capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [json.loads(x) for x in open(os.path.join(work, "metrics.jsonl"))]
    # Worker 0 alone writes the metrics: one line per partition, over both workers' examples.
    assert [x["partition"] for x in lines] == ["20260101/00", "20260101/01", "20260101/02"]
    assert all(x["examples"] == 2000 for x in lines)
    assert lines[-1]["progressive_auc"] > lines[0]["progressive_auc"]
    workers = [json.load(open(os.path.join(work, f"worker-{i}.json"))) for i in range(2)]
    # The dense parameters stayed identical on both workers; metrics merged exactly.
    assert workers[0]["params_sha256"] == workers[1]["params_sha256"]
    assert workers[0]["cumulative_auc"] == workers[1]["cumulative_auc"]
    assert workers[0]["table_rows"] == lines[-1]["table_rows"] > 0
    steps = sorted(os.listdir(os.path.join(work, "checkpoints")))
    assert steps == ["000001", "000002", "000003"]
