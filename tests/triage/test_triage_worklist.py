"""Worklist: studies grouped by study_key, ordered by priority then deciding score, written as CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from cxrtriage.errors import InputError, OutputError
from cxrtriage.results import ImageRecord, from_row
from cxrtriage.triage import WORKLIST_COLUMNS, Priority, build_worklist, write_worklist


def row(path: str, study: str, priority: str, score: float | None = None, finding: str = "", status: str = "scored",
        reason: str = "", uid: str = "") -> ImageRecord:
    return from_row({"path": path, "study_key": study, "study_instance_uid": uid, "status": status, "reason": reason,
                     "priority": priority, "priority_reason": reason or f"{finding} {score}", "priority_finding": finding,
                     "priority_score": score})


def test_studies_ordered_by_priority_then_deciding_score() -> None:
    rows = [
        row("n1.dcm", "S-normal", "normal", 0.05, "effusion"),
        row("r1.dcm", "S-routine", "routine", 0.40, "nodule"),
        row("u1.dcm", "S-urgent-low", "urgent", 0.55, "effusion"),
        row("u2.dcm", "S-urgent-high", "urgent", 0.91, "pneumonia"),
        row("c1.dcm", "S-critical", "critical", 0.42, "pneumothorax"),
        row("f1.dcm", "S-failed", "not_assessed", status="failed", reason="failed: truncated pixel data"),
    ]
    wl = build_worklist(rows)
    assert [e.study_key for e in wl] == ["S-critical", "S-urgent-high", "S-urgent-low", "S-routine", "S-failed", "S-normal"]
    assert wl[0].priority is Priority.CRITICAL and (wl[0].top_finding, wl[0].top_score) == ("pneumothorax", 0.42)
    assert wl[4].priority is Priority.NOT_ASSESSED and wl[4].n_scored == 0
    assert "truncated pixel data" in wl[4].priority_reason


def test_study_takes_the_highest_priority_of_its_assessed_images() -> None:
    rows = [
        row("s1/frontal.dcm", "S1", "routine", 0.3, "nodule", uid="1.2.3"),
        row("s1/lateral.dcm", "S1", "not_assessed", status="excluded", reason="excluded: lateral view"),
        row("s1/frontal2.dcm", "S1", "urgent", 0.6, "effusion", uid="1.2.3"),
        row("s2/frontal.dcm", "S2", "normal", 0.1, "effusion"),
        row("s2/lateral.dcm", "S2", "not_assessed", status="excluded", reason="excluded: lateral view"),
    ]
    wl = build_worklist(rows)
    s1, s2 = wl
    assert (s1.study_key, s1.priority, s1.n_images, s1.n_scored, s1.study_instance_uid) == ("S1", Priority.URGENT, 3, 2, "1.2.3")
    assert s1.priority_reason == "effusion 0.6 [frontal2.dcm]; 1 of 3 images not assessed"
    assert s1.paths == ("s1/frontal.dcm", "s1/lateral.dcm", "s1/frontal2.dcm")
    # An excluded lateral does not turn an assessed normal study into "not assessed".
    assert s2.priority is Priority.NORMAL


def test_ties_broken_by_score_then_key_and_missing_scores_last() -> None:
    rows = [row("b.png", "B", "urgent", 0.7, "x"), row("a.png", "A", "urgent", 0.7, "x"), row("c.png", "C", "urgent", None),
            row("d.png", "D", "urgent", 0.9, "x")]
    assert [e.study_key for e in build_worklist(rows)] == ["D", "A", "B", "C"]


def test_rows_without_deciding_columns_fall_back_to_their_top_score() -> None:
    rows = [{"path": "a.png", "study_key": "A", "status": "scored", "priority": "routine", "priority_reason": "r",
             "score_effusion": "0.31", "score_nodule": "0.52"},
            {"path": "b.png", "study_key": "B", "status": "scored", "priority": "routine", "priority_reason": "r",
             "score_effusion": "0.91", "score_nodule": ""}]
    wl = build_worklist([from_row(r) for r in rows])
    assert [(e.study_key, e.top_finding, e.top_score) for e in wl] == [("B", "effusion", 0.91), ("A", "nodule", 0.52)]


def test_rows_without_study_key_are_their_own_study() -> None:
    wl = build_worklist([row("x/a.png", "", "routine", 0.3), row("x/b.png", "", "routine", 0.2)])
    assert [e.study_key for e in wl] == ["x/a.png", "x/b.png"]


def test_files_that_are_no_image_are_on_no_study_list() -> None:
    # A README or a DICOM SR beside the images has no study key (the decode stage gives it none): it is neither
    # counted among the study's images nor a study of its own. A failed file without a key still reaches a reader.
    rows = [row("s/frontal.png", "folder:s", "routine", 0.3, "nodule"),
            row("s/lateral.dcm", "folder:s", "not_assessed", status="excluded", reason="excluded: lateral view"),
            row("s/README.md", "", "not_assessed", status="excluded", reason="excluded: text file, not an image"),
            row("s/sr.dcm", "", "not_assessed", status="excluded", reason="excluded: non-image object: Basic Text SR"),
            row("s/broken.dcm", "", "not_assessed", status="failed", reason="failed: truncated")]
    study, broken = build_worklist(rows)
    assert (study.study_key, study.n_images, study.n_scored) == ("folder:s", 2, 1)
    assert study.paths == ("s/frontal.png", "s/lateral.dcm")
    assert study.priority_reason == "nodule 0.3 [frontal.png]; 1 of 2 images not assessed"
    assert (broken.study_key, broken.priority, broken.n_images) == ("s/broken.dcm", Priority.NOT_ASSESSED, 1)


def test_unknown_priority_is_an_error() -> None:
    with pytest.raises(InputError, match="priority 'high' is not one of"):
        build_worklist([row("a.png", "A", "high", 0.3)])


def test_write_worklist_csv(tmp_path: Path) -> None:
    rows = [row("s1/a.dcm", "S1", "routine", 0.3, "nodule"), row("s1/b.dcm", "S1", "critical", 0.8, "pneumothorax"),
            row("s2/c.dcm", "S2", "normal", 0.1, "effusion")]
    path = write_worklist(tmp_path / "out" / "worklist.csv", build_worklist(rows))
    with open(path, newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == list(WORKLIST_COLUMNS)
    assert [(r["rank"], r["study_key"], r["priority"], r["top_finding"], r["top_score"]) for r in got] == [
        ("1", "S1", "critical", "pneumothorax", "0.8000"), ("2", "S2", "normal", "effusion", "0.1000")]
    assert got[0]["paths"] == "s1/a.dcm;s1/b.dcm"
    assert (got[0]["n_images"], got[0]["n_scored"]) == ("2", "2")


def test_write_worklist_reports_unwritable_path(tmp_path: Path) -> None:
    (tmp_path / "worklist.csv").mkdir()
    with pytest.raises(OutputError, match="worklist.csv: cannot write"):
        write_worklist(tmp_path / "worklist.csv", [])
