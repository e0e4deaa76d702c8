"""The notebooks run top to bottom in a fresh kernel; their last printed line is checked."""

from __future__ import annotations

import json
import os
import sys

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO


def run_notebook(name: str, tmp_path, monkeypatch) -> dict:
    # The kernelspec starts "python": make that this interpreter, not whatever PATH finds.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    nb = nbformat.read(os.path.join(REPO, "colab", name), as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    printed = [
        o["text"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if o.get("name") == "stdout"
    ]
    return json.loads(printed[-1].strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_quickstart(tmp_path, monkeypatch):
    r = run_notebook("01_quickstart.ipynb", tmp_path, monkeypatch)
    assert r["partitions"] == 8 and r["png_bytes"] > 10_000
    assert r["last_auc"] > r["first_auc"] + 0.1 and r["last_auc"] < r["oracle_auc"]
    assert r["table_rows"] > 0 and r["evicted"] > 0


@pytest.mark.timeout(900)
def test_custom_model(tmp_path, monkeypatch):
    r = run_notebook("02_custom_model.ipynb", tmp_path, monkeypatch)
    assert r["checkpoint"] == 4 and r["trained_through"] == "20260101/03"
    assert r["examples"] == 4000 and r["heldout_auc"] > 0.6


@pytest.mark.timeout(900)
def test_sharded_store(tmp_path, monkeypatch):
    r = run_notebook("03_sharded_store.ipynb", tmp_path, monkeypatch)
    assert r["rows_loaded"] == r["rows_two_shards"] > 0 and r["identical_embeddings"]
