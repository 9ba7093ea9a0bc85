"""The report folder: a full report run replaces the writer's earlier files as a whole, the user's own files stay, and
an incremental call (serve, watch) keeps the earlier studies' pages unless they were written with another setting."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from report_fixtures import make_results

from cxrtriage.errors import OutputError
from cxrtriage.report.batch import ReportSummary, build_reports
from cxrtriage.report.folder import RECORD_NAME, read_record, writer_files
from cxrtriage.report.pseudonym import ENV_PSEUDONYM_KEY
from cxrtriage.report.study import load_results

STUDY_A = "1.2.826.0.1.3680043.8.498.1001"
STUDY_B = "1.2.826.0.1.3680043.8.498.2002"
KEY, OTHER_KEY = "a-site-secret-of-sixteen+", "another-site-secret-of-sixteen"
# What the identified pages of make_results show (name, ID, birth date, accession) or are named by.
IDENTIFIERS = ("Doe", "PID-123", "PID-456", "Müller", "1960-01-02", "ACC-9", STUDY_A, STUDY_B, "png_case")
OWN_FILES = {  # a user's own files in report/; "2024.pdf" has the form of an identified (UID) slug
    "notes.txt": "my notes", "2024.pdf": "not a report", "study-own.html": "<p>mine</p>",
    "study-0123456789.txt": "mine too", "mine/1.2.826.0.1.3680043.8.498.1001.html": "in a folder of mine",
}


def _names(out: Path) -> set[str]:
    return {p.name for p in (out / "report").iterdir() if p.is_file()}


def _study_files(summary: ReportSummary) -> set[str]:
    """The pages and PDFs of the summary's studies, and the pictures their pages show."""
    names: set[str] = set()
    for s in summary.studies:
        for path in (s.html, s.pdf):
            if path is not None:
                names.add(path.name)
        if s.html is not None:
            names |= {p.name for p in s.html.parent.glob(f"{s.slug}-image*.jpg")}
    return names


def _image_paths(out: Path, study: str) -> set[str]:
    return {img.record.path for s in load_results(out).studies if s.key == study for img in s.images}


def _add_own_files(report: Path) -> None:
    for name, text in OWN_FILES.items():
        (report / name).parent.mkdir(parents=True, exist_ok=True)
        (report / name).write_text(text, encoding="utf-8")


def _assert_own_files_kept(report: Path) -> None:
    for name, text in OWN_FILES.items():
        assert (report / name).read_text(encoding="utf-8") == text, name


def test_a_deidentified_run_after_an_identified_one_leaves_no_identified_page_picture_or_pdf(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = make_results(tmp_path)
    identified = build_reports(out, pdf=True)
    before = _names(out)
    assert {f"{STUDY_A}.html", f"{STUDY_A}.pdf", f"{STUDY_A}-image1-1.jpg", f"{STUDY_B}.html"} <= before
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY)
    deidentified = build_reports(out, pdf=True, deidentify=True)
    after = _names(out)
    assert after == _study_files(deidentified) | {"index.html", RECORD_NAME}  # this run's files, nothing else
    assert before & after == {"index.html", RECORD_NAME}
    assert all(n.startswith("study-") for n in after - {"index.html", RECORD_NAME})
    assert any(n.endswith(".jpg") for n in after) and any(n.endswith(".pdf") for n in after)
    texts = "".join((out / "report" / n).read_text(encoding="utf-8") for n in ("index.html", RECORD_NAME))
    assert not [i for i in IDENTIFIERS if i in texts]
    record = read_record(out / "report")
    assert record is not None and record.deidentified
    assert record.studies == {s.slug for s in deidentified.studies}
    # and the other way round: an identified run leaves no page of the de-identified one
    build_reports(out, pdf=True)
    assert _names(out) == _study_files(identified) | {"index.html", RECORD_NAME}


def test_the_users_own_files_in_report_stay_and_a_deidentified_run_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    out = make_results(tmp_path)
    report = out / "report"
    report.mkdir()
    _add_own_files(report)
    build_reports(out, pdf=False)
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY)
    with caplog.at_level(logging.WARNING, logger="cxrtriage.report.batch"):
        build_reports(out, pdf=False, deidentify=True)
    _assert_own_files_kept(report)
    assert not (report / f"{STUDY_A}.html").exists()
    (warning,) = [r.getMessage() for r in caplog.records if "did not write" in r.getMessage()]
    assert "holds 5 file(s) or folder(s)" in warning  # the 4 files and the folder mine/


def test_a_file_of_the_users_own_under_the_records_name_is_refused_before_anything_is_removed(tmp_path: Path) -> None:
    out = make_results(tmp_path)
    build_reports(out, pdf=False)
    before = _names(out)
    (out / "report" / RECORD_NAME).write_text('{"mine": true}', encoding="utf-8")
    with pytest.raises(OutputError, match=rf"{RECORD_NAME}: not the record .* move the file out"):
        build_reports(out, pdf=False)
    assert _names(out) == before and (out / "report" / RECORD_NAME).read_text() == '{"mine": true}'


def test_an_earlier_report_that_cannot_be_removed_stops_the_run_before_anything_new(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = make_results(tmp_path)
    build_reports(out, pdf=False)
    stuck = out / "report" / f"{STUDY_B}.html"
    unlink = Path.unlink

    def refuse(self: Path, missing_ok: bool = False) -> None:
        if self == stuck:
            raise PermissionError(13, "Permission denied")
        unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY)
    with pytest.raises(OutputError, match=rf"{STUDY_B}\.html: cannot remove .* remove it yourself"):
        build_reports(out, pdf=False, deidentify=True)
    assert not [n for n in _names(out) if n.startswith("study-")]  # no de-identified page beside the identified one


def test_the_incremental_path_keeps_and_links_the_earlier_studies(tmp_path: Path) -> None:
    out = make_results(tmp_path)
    report = out / "report"
    labels: dict[str, str] = {}
    first = build_reports(out, pdf=True, only=_image_paths(out, STUDY_A), labels=labels)
    assert [s.slug for s in first.studies if s.html] == [STUDY_A]
    page_a = report / f"{STUDY_A}.html"
    kept = {p: p.stat().st_mtime_ns for p in report.iterdir() if p.name.startswith(STUDY_A)}
    assert page_a in kept and report / f"{STUDY_A}.pdf" in kept
    report.joinpath("notes.txt").write_text("mine", encoding="utf-8")
    second = build_reports(out, pdf=True, only=_image_paths(out, STUDY_B), labels=labels)
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # study A's files are neither removed nor written again
    assert [s.slug for s in second.studies if s.html] == [STUDY_A, STUDY_B]  # the index links both
    index = second.index.read_text(encoding="utf-8")
    assert f'href="{STUDY_A}.html"' in index and f'href="{STUDY_B}.html"' in index
    assert not [n for n in second.notes if "written again" in n]
    record = read_record(report)
    assert record is not None and record.studies == {STUDY_A, STUDY_B} and not record.deidentified
    assert report.joinpath("notes.txt").read_text() == "mine"


@pytest.mark.parametrize("earlier", ["identified", "identified, no record (an earlier version)",
                                     "de-identified under another key"])
def test_an_incremental_call_with_another_setting_writes_every_page_again(
        earlier: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = make_results(tmp_path)
    report = out / "report"
    report.mkdir()
    _add_own_files(report)
    if earlier.startswith("de-identified"):
        monkeypatch.setenv(ENV_PSEUDONYM_KEY, OTHER_KEY)
    first = build_reports(out, pdf=True, deidentify=earlier.startswith("de-identified"),
                          only=_image_paths(out, STUDY_A))
    first_files = _study_files(first)
    assert len(first_files) >= 3  # page, PDF, picture
    if "no record" in earlier:
        (report / RECORD_NAME).unlink()
    monkeypatch.setenv(ENV_PSEUDONYM_KEY, KEY)
    labels: dict[str, str] = {}
    second = build_reports(out, pdf=True, deidentify=True, dicom=True, only=_image_paths(out, STUDY_B), labels=labels)
    assert not first_files & _names(out)
    assert _names(out) - set(OWN_FILES) == _study_files(second) | {"index.html", RECORD_NAME}
    a = next(s for s in second.studies if s.key == STUDY_A)
    assert a.html is not None and a.html.is_file() and a.slug.startswith("study-")  # written again, de-identified
    assert set(labels) == {s.key for s in second.studies}
    assert [n for n in second.notes if "every study's report was written again" in n]
    # DICOM results still only for the new images: the earlier ones were written (and sent) with their batch
    b = next(s for s in second.studies if s.key == STUDY_B)
    assert second.dicom_files and {p.parent.name for p in second.dicom_files} == {b.slug}
    _assert_own_files_kept(report)
    index = second.index.read_text(encoding="utf-8")
    assert not [i for i in IDENTIFIERS if i in index]


def test_writer_files_are_only_those_named_as_the_writer_names_them(tmp_path: Path) -> None:
    ours = ["index.html", RECORD_NAME, "index.html.partial", "study-0123456789.html", "study-0123456789.pdf",
            "study-ABCDEF0123-2-image3-1.jpg", "1.2.3.html", "1.2.3-1.pdf", "1.2.3-image12-2.jpg",
            "1.2.3.pdf.partial", "png_case-0a1b2c3d.html"]
    others = ["notes.txt", "study-abcdef0123.html", "study-0123456789.txt", "1.2.34.html", "1.2.html",
              "1.2.3-imageX-1.jpg", "1.2.3.jpg", "index.htm", "png_case.html"]
    for name in ours + others:
        (tmp_path / name).write_text("x", encoding="utf-8")
    (tmp_path / "1.2.3-image1-1.jpg").mkdir()  # a folder is never the writer's
    found = {p.name for p in writer_files(tmp_path, ["1.2.3", "png_case-0a1b2c3d"])}
    assert found == set(ours)
    assert writer_files(tmp_path / "missing", ["1.2.3"]) == []
    record = json.dumps({"tool": "cxrtriage", "deidentified": False, "studies": ["1.2.3"]})
    (tmp_path / RECORD_NAME).write_text(record, encoding="utf-8")
    assert read_record(tmp_path) is not None and read_record(tmp_path / "missing") is None
