"""Tests of the crash-safe results writer (CSV + JSONL, atomic rename)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from cxrtriage.errors import OutputError
from cxrtriage.report.results import ResultsWriter, read_results_jsonl, result_columns


def test_columns_order() -> None:
    cols = result_columns(["a", "b"], extra=["custom", "lung_area_px", "heatmaps"])
    assert cols[:3] == ["path", "status", "reason"]
    assert cols.index("score_a") == cols.index("pixel_spacing_mm") + 1
    assert cols[cols.index("score_b") + 1] == "model_name"
    assert cols[-3:] == ["heatmaps", "lung_area_px", "custom"]


def test_rows_land_only_after_close(tmp_path: Path) -> None:
    cols = result_columns(["a"], extra=["heatmaps"])
    w = ResultsWriter(tmp_path / "out", cols)
    w.write({"path": "x.dcm", "status": "scored", "score_a": 0.1234567891, "pixel_spacing_mm": (0.1, 0.2),
             "heatmaps": ["h/1.png", "h/2.png"], "rows": 10})
    w.write({"path": "y.png", "status": "failed", "reason": "cannot decode"})
    w.flush()
    assert not (tmp_path / "out" / "results.csv").exists()
    assert (tmp_path / "out" / "results.csv.partial").exists()
    w.close()
    assert not (tmp_path / "out" / "results.csv.partial").exists()
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["score_a"] == "0.123457" and rows[0]["pixel_spacing_mm"] == "0.1;0.2"
    assert rows[0]["heatmaps"] == "h/1.png;h/2.png" and rows[1]["score_a"] == ""
    js = read_results_jsonl(tmp_path / "out" / "results.jsonl")
    assert list(js[0]) == cols
    assert js[0]["pixel_spacing_mm"] == [0.1, 0.2] and js[0]["heatmaps"] == ["h/1.png", "h/2.png"]
    assert js[1]["score_a"] is None and js[1]["reason"] == "cannot decode"


def test_exception_leaves_only_partial_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ResultsWriter(tmp_path, result_columns(["a"])) as w:
        w.write({"path": "x", "status": "scored"})
        raise RuntimeError("crash")
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "results.jsonl").exists()
    assert json.loads((tmp_path / "results.jsonl.partial").read_text())["path"] == "x"


def test_bad_rows_rejected(tmp_path: Path) -> None:
    w = ResultsWriter(tmp_path, result_columns(["a"]))
    with pytest.raises(ValueError, match="not in the header"):
        w.write({"path": "x", "status": "scored", "nope": 1})
    with pytest.raises(ValueError, match="status must be one of"):
        w.write({"path": "x", "status": "done"})
    w.abort(remove=True)
    assert list(tmp_path.iterdir()) == []


def test_out_dir_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write results here.*choose another --out"):
        ResultsWriter(tmp_path / "file" / "out", result_columns(["a"]))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_dir(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="cannot write results here"):
            ResultsWriter(ro / "sub", result_columns(["a"]))
    finally:
        ro.chmod(0o700)
