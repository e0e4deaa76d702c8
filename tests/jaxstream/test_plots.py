"""Plots of a metrics JSONL: its records read back, a bad file named by its line."""

from __future__ import annotations

import json

import pytest

from jaxstream.plots import load_metrics, plot_metrics

RECORD = {"partition": "20260101/00", "progressive_auc": 0.7, "train_auc": 0.72, "table_rows": 10,
          "pending": 4, "admitted": 10, "evicted": 0}  # fmt: skip


@pytest.mark.parametrize(
    "text, error",
    [
        (json.dumps(RECORD) + "\n\n" + json.dumps(RECORD) + "\n", None),
        ("", "m.jsonl: no metrics record"),
        (json.dumps(RECORD) + "\n{not json\n", "m.jsonl:2: not a metrics record"),
    ],
    ids=["two_records_and_a_blank_line", "empty", "a_line_cut_short"],
)  # fmt: skip
def test_load_metrics(tmp_path, text, error):
    path = tmp_path / "m.jsonl"
    path.write_text(text)
    if error is None:
        assert load_metrics(str(path)) == [RECORD, RECORD]
    else:
        with pytest.raises(ValueError, match=error):
            load_metrics(str(path))


def test_plot_metrics_writes_a_png(tmp_path):
    out = plot_metrics([RECORD, {**RECORD, "partition": "20260101/01"}], str(tmp_path / "m.png"))
    assert open(out, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
