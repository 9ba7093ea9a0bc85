"""Results tables: records to CSV/JSONL and back, column order, crash safety, clear errors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from factories import read_jsonl

from cxrtriage.errors import InputError, OutputError
from cxrtriage.results import (
    ImageRecord,
    LabelArea,
    Priority,
    ResultsWriter,
    Status,
    from_row,
    read_results,
    read_results_dir,
    result_columns,
    segment_columns,
    to_row,
)

SCORED = ImageRecord("x.dcm", Status.SCORED, reason="CR CHEST PA", input_kind="dicom", study_key="1.2.3", rows=10,
                     columns=12, pixel_spacing_mm=(0.1, 0.2), scores={"a": 0.1234567891}, model_name="m",
                     priority=Priority.URGENT, priority_reason="a 0.12 >= 0.1", priority_finding="a", priority_score=0.12,
                     heatmaps=("h/1.png", "h/2.png"), lung_area_px=100, lung_area_mm2=2.5)
FAILED = ImageRecord("y.png", Status.FAILED, reason="cannot decode", priority=Priority.NOT_ASSESSED, priority_finding="")


def test_columns_order() -> None:
    cols = result_columns(["a", "b"], extra=["custom", "lung_area_px", "heatmaps"])
    assert cols[:3] == ["path", "status", "reason"]
    assert cols.index("score_a") == cols.index("pixel_spacing_mm") + 1
    assert cols[cols.index("score_b") + 1] == "model_name"
    assert cols[-3:] == ["heatmaps", "lung_area_px", "custom"]


def test_rows_land_only_after_close_and_read_back_equal(tmp_path: Path) -> None:
    cols = result_columns(["a"], extra=["heatmaps", "lung_area_px", "lung_area_mm2", "priority_finding", "priority_score"])
    w = ResultsWriter(tmp_path / "out", cols)
    w.write(SCORED)
    w.write(FAILED)
    w.flush()
    assert not (tmp_path / "out" / "results.csv").exists()
    assert (tmp_path / "out" / "results.csv.partial").exists()
    w.close()
    assert not (tmp_path / "out" / "results.csv.partial").exists()
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["score_a"] == "0.123457" and rows[0]["pixel_spacing_mm"] == "0.1;0.2" and rows[0]["priority"] == "urgent"
    assert rows[0]["heatmaps"] == "h/1.png;h/2.png" and rows[1]["score_a"] == ""
    js = read_jsonl(tmp_path / "out" / "results.jsonl")
    assert list(js[0]) == cols
    assert js[0]["pixel_spacing_mm"] == [0.1, 0.2] and js[0]["heatmaps"] == ["h/1.png", "h/2.png"]
    assert js[1]["score_a"] is None and js[1]["reason"] == "cannot decode" and js[1]["priority_finding"] == ""
    # JSONL gives the records back exactly; CSV too, but for the 6-digit floats and empty strings
    back = read_results(tmp_path / "out" / "results.jsonl")
    assert back.labels == ("a",) and back.columns == tuple(cols)
    assert back.records[0] == SCORED.replace(scores={"a": 0.1234567891})
    assert back.records[1] == FAILED.replace(scores={"a": None}, priority_finding=None)
    from_csv = read_results(tmp_path / "out" / "results.csv").records[0]
    assert from_csv.scores == {"a": pytest.approx(0.123457)} and from_csv.heatmaps == SCORED.heatmaps
    assert from_csv.replace(scores=SCORED.scores) == SCORED
    assert read_results_dir(tmp_path / "out").path.name == "results.jsonl"


def test_segment_table_writes_per_label_areas(tmp_path: Path) -> None:
    rec = ImageRecord("x.png", Status.SCORED, lung_area_px=30, label_areas={"right": LabelArea(10, 1.5), "left": LabelArea(20)})
    row = to_row(rec, segment_columns(["background", "right", "left"]))
    assert (row["right_px"], row["right_mm2"], row["left_px"], row["left_mm2"]) == (10, 1.5, 20, None)
    assert from_row(row).label_areas == rec.label_areas


def test_exception_leaves_only_partial_files(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), ResultsWriter(tmp_path, result_columns(["a"])) as w:
        w.write(ImageRecord("x", Status.SCORED))
        raise RuntimeError("crash")
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "results.jsonl").exists()
    assert json.loads((tmp_path / "results.jsonl.partial").read_text())["path"] == "x"


def test_values_without_a_column_are_refused(tmp_path: Path) -> None:
    w = ResultsWriter(tmp_path, result_columns(["a"]))
    with pytest.raises(ValueError, match=r"\['nope'\] have no column"):
        w.write(ImageRecord("x", Status.SCORED, extra={"nope": 1}))
    with pytest.raises(ValueError, match="score_b"):
        w.write(ImageRecord("x", Status.SCORED, scores={"b": 0.5}))
    with pytest.raises(TypeError, match="status must be a Status"):
        ImageRecord("x", "done")  # type: ignore[arg-type]
    w.abort(remove=True)
    assert list(tmp_path.iterdir()) == []


def test_malformed_files_name_the_line(tmp_path: Path) -> None:
    p = tmp_path / "results.jsonl"
    p.write_text('{"path": "a", "status": "scored"}\n{"path": "b", "status": "done"}\n')
    with pytest.raises(InputError, match=r"results.jsonl:2: status 'done'"):
        read_results(p)
    p.write_text('{"path": "a", "status": "scored"}\nnot json\n')
    with pytest.raises(InputError, match=r"results.jsonl:2: not valid JSON"):
        read_results(p)
    (tmp_path / "x.csv").write_text("path,reason\na,b\n")
    with pytest.raises(InputError, match="no 'status' column"):
        read_results(tmp_path / "x.csv")
    with pytest.raises(InputError, match="results file not found"):
        read_results(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="neither results.jsonl nor results.csv"):
        read_results_dir(tmp_path / "empty")


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


def test_source_and_shortcut_columns_round_trip_through_csv_and_jsonl(tmp_path: Path) -> None:
    """The DICOM source facts sit after the tail columns (earlier columns keep their place); the per-finding shares
    of evidence outside the lungs are one mapping column ('label=share;...' in CSV, an object in JSONL)."""
    rec = SCORED.replace(manufacturer="ACME", device_model="DR-1", institution="General", study_month="2024-03",
                         age_band="40-59", sex="F", outside_lungs={"a": 0.62, "b": 0.05},
                         shortcut="possible shortcut: evidence outside the lung fields for 'a' 62% (level 50%)")
    cols = result_columns(["a", "b"], extra=["shortcut", "heatmaps", "outside_lungs", "priority_finding", "priority_score",
                                            "lung_area_px", "lung_area_mm2"])
    assert cols[cols.index("site_file") + 1:cols.index("site_file") + 7] == [
        "manufacturer", "device_model", "institution", "study_month", "age_band", "sex"]
    assert cols[cols.index("heatmaps"):cols.index("heatmaps") + 3] == ["heatmaps", "outside_lungs", "shortcut"]
    with ResultsWriter(tmp_path, cols) as w:
        w.write(rec)
        w.write(FAILED)
    with open(tmp_path / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["outside_lungs"] == "a=0.62;b=0.05" and rows[0]["manufacturer"] == "ACME"
    assert rows[1]["outside_lungs"] == "" and rows[1]["shortcut"] == ""
    assert read_jsonl(tmp_path / "results.jsonl")[0]["outside_lungs"] == {"a": 0.62, "b": 0.05}
    for name in ("results.csv", "results.jsonl"):
        back = read_results(tmp_path / name).records
        assert back[0].replace(scores=rec.scores) == rec, name
        assert back[1].outside_lungs == {} and back[1].shortcut is None
    with pytest.raises(ValueError, match="outside_lungs"):  # a share without its column would be lost
        ResultsWriter(tmp_path / "b", result_columns(["a"])).write(rec.replace(heatmaps=None, scores={}))
