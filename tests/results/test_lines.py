"""The results table kept line by line (``serve``, ``watch``): the same bytes as ``ResultsWriter``, the same records."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cxrtriage.results import (
    CsvLines,
    ImageRecord,
    ResultsWriter,
    Status,
    decode_record,
    read_results,
    result_columns,
    write_csv_lines,
)

LATIN1_NAME = os.fsdecode(b"/data/M\xfcller\\case.png")


def _records() -> list[ImageRecord]:
    return [
        ImageRecord(path="/in/=1+1.png", status=Status.SCORED, study_key='=HYPERLINK("http://x","y")',
                    scores={"a": -0.5, "b": 0.25}, reason="@note", rows=24, columns=20,
                    pixel_spacing_mm=(0.1, 0.125), priority_score=0.3),
        ImageRecord(path=LATIN1_NAME, status=Status.FAILED, reason=f"{LATIN1_NAME}: unreadable", study_key="+x"),
        ImageRecord(path="/in/plain, \"quoted\".dcm", status=Status.EXCLUDED, reason="lateral view\nsecond line"),
    ]


def test_lines_are_the_bytes_the_writer_writes_and_rows_read_back_as_the_records(tmp_path: Path) -> None:
    columns = result_columns(["a", "b"])
    rows = []
    with ResultsWriter(tmp_path / "writer", columns) as w:
        for r in _records():
            rows.append(w.write(r))
    lines = CsvLines(columns)
    made = write_csv_lines(tmp_path / "lines.csv", lines.header, [lines.line(r) for r in rows])
    assert made.read_bytes() == (tmp_path / "writer" / "results.csv").read_bytes()

    written = read_results(tmp_path / "writer" / "results.jsonl").records
    jsonl = (tmp_path / "writer" / "results.jsonl").read_text(encoding="utf-8").splitlines()
    decoded = [decode_record(json.loads(line)) for line in jsonl]
    assert decoded == list(written)
    assert decoded[1].path == LATIN1_NAME and decoded[0].study_key == '=HYPERLINK("http://x","y")'
