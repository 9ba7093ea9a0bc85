"""Values safe for files and spreadsheets: the formula guard, the lossless escape of non-UTF-8 text, control
characters cleaned at the record boundary, and results tables that read back exactly what was written."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest

from cxrtriage.results import (
    UNDECODABLE_NOTE,
    ImageRecord,
    ResultsWriter,
    SafeCsvWriter,
    Status,
    clean_text,
    decode_row,
    display_text,
    encode_row,
    read_results,
    read_safe_csv,
    result_columns,
    spreadsheet_text,
    spreadsheet_value,
)

LATIN1_NAME = os.fsdecode(b"/data/M\xfcller\\case.png")  # a Latin-1 byte and a backslash: both must survive


@pytest.mark.parametrize("cell", ["=1+1", "+1+1", "-1+cmd|' /C calc'!A0", "@SUM(A1)", "\t=1", "\r=1", "'quoted",
                                  "''", '=HYPERLINK("http://x","y")'])
def test_formula_cells_are_shown_as_text_and_read_back(cell: str) -> None:
    safe = spreadsheet_text(cell)
    assert safe.startswith("'") and safe[1:] == cell
    assert spreadsheet_value(safe) == cell


@pytest.mark.parametrize("cell", ["-0.5", "+3", "1e-05", "-1.5E+3", "-inf", "nan", "plain", "", "1.2.3", "a=b",
                                  "scored"])
def test_numbers_and_plain_text_stay_as_they_are(cell: str) -> None:
    assert spreadsheet_text(cell) == cell
    assert spreadsheet_value(cell) == cell
    assert spreadsheet_value("'plain") == "'plain"  # a cell written by hand with an apostrophe keeps it


def test_control_characters_are_cleaned_and_padding_dropped() -> None:
    assert clean_text("1.2.3\x00") == "1.2.3"  # DICOM UI padding
    assert clean_text("1.2.3\x00.4") == "1.2.3\ufffd.4"
    assert clean_text("XR\x1b[31mCHEST\x7f") == "XR\ufffd[31mCHEST\ufffd"
    assert clean_text("two\nlines\tand tab") == "two\nlines\tand tab"
    assert clean_text("PA ") == "PA "  # without a control character nothing changes


def test_record_boundary_removes_nul_from_every_text_field_but_keeps_the_path() -> None:
    rec = ImageRecord(path="/in/a\x01.dcm", status=Status.SCORED, study_key="1.2\x00.3", study_instance_uid="1.2\x00.3",
                      view="PA\x00", reason="Modality 'X\x00'", heatmaps=("h\x00.png",), extra={"k": "v\x00w"})
    texts = [rec.study_key, rec.study_instance_uid, rec.view, rec.reason, *(rec.heatmaps or ()), rec.extra["k"]]
    assert not any("\x00" in t for t in texts if t)
    assert rec.view == "PA" and rec.path == "/in/a\x01.dcm"
    assert rec.replace(reason="x\x00y").reason == "x\ufffdy"


def test_undecodable_text_is_escaped_losslessly_and_says_so() -> None:
    row = {"path": LATIN1_NAME, "reason": f"{LATIN1_NAME}: failed", "n": 3, "items": ["a\\b", LATIN1_NAME]}
    enc = encode_row(row, "reason")
    json.dumps(enc, ensure_ascii=False).encode("utf-8")  # valid UTF-8 now
    assert enc["path"] == "/data/M\\xfcller\\\\case.png" and enc["reason"].endswith(UNDECODABLE_NOTE)
    assert decode_row(enc, "reason") == row
    plain = {"path": "C:\\scans\\a.dcm", "reason": None}
    assert encode_row(plain, "reason") == plain and decode_row(plain, "reason") == plain  # Windows paths untouched
    assert display_text(LATIN1_NAME) == "/data/M\\xfcller\\case.png"


def test_safe_csv_round_trip_and_header(tmp_path: Path) -> None:
    f = io.StringIO()
    w = SafeCsvWriter(f, ["path", "reason", "score"], note_column="reason")
    w.writerow({"path": "=1+1.png", "reason": "-bad", "score": "-0.5"})
    w.writerow({"path": LATIN1_NAME, "reason": "", "score": ""})
    text = f.getvalue()
    text.encode("utf-8")
    cells = [c for r in csv.reader(io.StringIO(text)) for c in r]
    assert not any(c[:1] in ("=", "+", "@", "\t", "\r") for c in cells)
    assert "-0.5" in cells and "'=1+1.png" in cells and "'-bad" in cells
    header, rows = read_safe_csv(io.StringIO(text), "reason")
    assert header == ["path", "reason", "score"]
    assert rows[0] == {"path": "=1+1.png", "reason": "-bad", "score": "-0.5"}
    assert rows[1]["path"] == LATIN1_NAME and rows[1]["reason"] == ""


def test_results_tables_read_back_hostile_values_exactly(tmp_path: Path) -> None:
    """Row 9 and row 2 at the writer: formulas in UIDs, study keys and file names; a non-UTF-8 file name."""
    recs = [
        ImageRecord(path="/in/=1+1.png", status=Status.SCORED, study_key='=HYPERLINK("http://x","y")',
                    study_instance_uid='=HYPERLINK("http://x","y")', scores={"a": -0.5}, reason="@note"),
        ImageRecord(path=LATIN1_NAME, status=Status.FAILED, reason=f"{LATIN1_NAME}: unreadable", study_key="+x"),
        ImageRecord(path="/in/plain.dcm", status=Status.EXCLUDED, reason="lateral view"),
    ]
    with ResultsWriter(tmp_path, result_columns(["a"])) as w:
        for r in recs:
            w.write(r)
    raw = (tmp_path / "results.csv").read_bytes().decode("utf-8")  # valid UTF-8
    for line in csv.reader(io.StringIO(raw)):
        assert not any(c[:1] in ("=", "+", "@", "\t", "\r") for c in line), line
    assert "-0.5" in raw  # numbers stay numbers
    for name in ("results.csv", "results.jsonl"):
        table = read_results(tmp_path / name)
        assert [r.path for r in table.records] == [r.path for r in recs]
        assert [r.reason for r in table.records] == [r.reason for r in recs]
        assert table.records[0].study_key == recs[0].study_key and table.records[1].study_key == "+x"
        assert table.records[0].scores["a"] == pytest.approx(-0.5)
