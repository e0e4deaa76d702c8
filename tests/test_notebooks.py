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


NOTEBOOKS = ("01_quickstart.ipynb", "02_custom_model.ipynb", "03_sharded_store.ipynb")
PUBLIC = {"jaxstream", "jaxstream.data", "jaxstream.plots", "hoststore", "hoststore.rpc"}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_ready_for_colab_and_github(name):
    """A badge to open it in Colab, an install cell first, outputs kept (so it reads on
    GitHub), and only the packages' public API."""
    import re
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        repository = tomllib.load(f)["project"]["urls"]["Repository"]
    nb = nbformat.read(os.path.join(REPO, "colab", name), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    slug = repository.removeprefix("https://github.com/")
    assert f"colab.research.google.com/github/{slug}/blob/main/colab/{name}" in nb.cells[0].source
    assert "pip" in code[0].source and repository in code[0].source
    shows = [c for c in code if "print(" in c.source or "Image(" in c.source]
    assert shows and all(c.get("outputs") for c in shows)
    imported = {m for c in code for m in re.findall(r"^(?:from|import) ((?:jaxstream|hoststore)"
                                                    r"[\w.]*)", c.source, re.M)}  # fmt: skip
    assert imported <= PUBLIC, imported - PUBLIC


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
