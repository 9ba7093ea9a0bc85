"""`cxrtriage predict` with triage, site, lungs and reports, through the CLI on tiny models."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import make_tiny_classifier, make_tiny_segmenter, write_dicom
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.model import resolve_manifest
from cxrtriage.triage import LabelSiteCalibration, SiteCalibration, write_site


def _pixels(rows: int, cols: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:rows, 0:cols][1]
    return np.clip(800 + 2400 * np.sin(np.pi * xx / cols) + rng.normal(0, 150, (rows, cols)), 0, 4095).astype(np.uint16)


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    write_dicom(root / "p1" / "pa.dcm", rows=256, cols=256, PixelSpacing=[0.4, 0.4], pixels=_pixels(256, 256, 1))
    write_dicom(root / "p1" / "lateral.dcm", view="LL")
    write_dicom(root / "p2" / "tiny.dcm", rows=40, cols=40)
    return root


@pytest.fixture()
def models(tmp_path: Path) -> tuple[Path, Path]:
    return (make_tiny_classifier(tmp_path / "models" / "cxr-classifier"),
            make_tiny_segmenter(tmp_path / "models" / "lung-segmenter", seed=6))


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), terminal_width=200)
    return result.exit_code, result.output


def _flat(output: str) -> str:
    """The output without colour codes, box characters and whitespace (rich wraps long lines at 80 columns)."""
    return re.sub(r"\x1b\[[0-9;]*m|[\s│┃]+", "", output)


def _rows(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "results.csv", newline="") as f:
        return {Path(r["path"]).name: r for r in csv.DictReader(f)}


def _base(scans: Path, out: Path, models: tuple[Path, Path], *extra: str) -> list[str]:
    return ["predict", str(scans), "--out", str(out), "--model", str(models[0]), "--workers", "0", *extra]


def test_help_lists_the_new_options() -> None:
    code, output = _invoke("predict", "--help")
    assert code == 0
    text = _flat(output)
    for opt in ("--policy", "--site", "--lungs", "--no-lungs", "--segmenter", "--report", "--dicom", "--deidentify",
                "--send", "--aet", "--called-aet", "--modality", "--no-pdf"):
        assert opt in text, opt
    assert "model_score_" in text and "(onlywith--site)" in text


def test_predict_triages_and_summarises(scans: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _invoke(*_base(scans, out, models))
    assert code == 0, output
    rows = _rows(out)
    assert rows["lateral.dcm"]["priority"] == "not_assessed"
    assert rows["tiny.dcm"]["priority"] == "not_assessed" and "image too small" in rows["tiny.dcm"]["quality"]
    assert rows["tiny.dcm"]["score_abnormal"] != ""  # scores are kept
    assert rows["pa.dcm"]["quality"] == "ok" and rows["pa.dcm"]["priority"] in ("urgent", "routine", "normal")
    assert all(r["site_file"] == "" for r in rows.values())
    assert "model_score_abnormal" not in rows["pa.dcm"] and "mask_path" not in rows["pa.dcm"]
    assert (out / "worklist.csv").is_file() and (out / "run.json").is_file()
    # the summary: counts by priority, the uncovered critical level, the quality failures, the files written
    assert "priority (images)" in output and "not_assessed 2" in output
    assert "no critical finding" in output and "1 image(s) failed (size 1)" in output
    for name in ("worklist.csv", "run.json", "results.csv"):
        assert str(out / name) in _flat(output)
    assert "lungs" not in [line.split("│")[1].strip() for line in output.splitlines() if line.count("│") >= 2]


def test_predict_with_site_file(scans: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    m = resolve_manifest(models[0])
    site = write_site(tmp_path / "site.toml", SiteCalibration(
        model_name=m.name, model_version=m.version, model_sha256=m.sha256, method="platt", target_sensitivity=0.95,
        labels={"effusion": LabelSiteCalibration("effusion", "platt", rule_out=0.01, balanced=0.02, a=1.0, b=3.0)}))
    out = tmp_path / "out"
    code, output = _invoke(*_base(scans, out, models, "--site", str(site)))
    assert code == 0, output
    pa = _rows(out)["pa.dcm"]
    assert pa["site_file"] == str(site.resolve()) and float(pa["score_effusion"]) > float(pa["model_score_effusion"])
    # b = +3 lifts every effusion score over the site's balanced threshold: urgent by the site's decision
    assert pa["priority"] == "urgent" and "effusion" in pa["priority_reason"] and "(site balanced)" in pa["priority_reason"]
    assert str(site.resolve()) in _flat(output)
    other = write_site(tmp_path / "other.toml", SiteCalibration(
        model_name=m.name, model_version="9.9", model_sha256=m.sha256, method="platt", target_sensitivity=0.95,
        labels={"effusion": LabelSiteCalibration("effusion", "platt", rule_out=0.01, balanced=0.02, a=1.0, b=0.0)}))
    code, output = _invoke(*_base(scans, tmp_path / "o2", models, "--site", str(other)))
    assert code == 4 and "version 9.9" in output and not (tmp_path / "o2").exists()


def test_predict_lungs_and_report(scans: Path, models: tuple[Path, Path], tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_PSEUDONYM_KEY", "a-site-secret-of-sixteen+")
    out = tmp_path / "out"
    code, output = _invoke(*_base(scans, out, models, "--segmenter", str(models[1]), "--report", "--no-pdf",
                                  "--deidentify"))
    assert code == 0, output
    pa = _rows(out)["pa.dcm"]
    assert pa["mask_path"] == "masks/pa.png" and (out / pa["mask_path"]).is_file()
    assert float(pa["lung_area_mm2"]) == pytest.approx(int(pa["lung_area_px"]) * 0.16, rel=1e-5)
    index = out / "report" / "index.html"
    assert index.is_file() and str(index) in _flat(output) and "studyreport(s)" in _flat(output)
    assert not list((out / "report").glob("*.pdf"))  # --no-pdf
    assert all(p.name.startswith(("study-", "index")) for p in (out / "report").iterdir())  # --deidentify
    run = json.loads((out / "run.json").read_text())
    assert run["segmenter"]["name"] == "tiny-segmenter" and run["options"]["report"] is True
    # --no-lungs wins over --report's default
    code, output = _invoke(*_base(scans, tmp_path / "o2", models, "--report", "--no-lungs", "--no-pdf"))
    assert code == 0, output
    assert "mask_path" not in _rows(tmp_path / "o2")["pa.dcm"]


def test_predict_dicom_results(scans: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, output = _invoke(*_base(scans / "p1", out, models, "--segmenter", str(models[1]), "--dicom", "--no-pdf"))
    assert code == 0, output
    kinds = sorted(p.name for p in (out / "dicom").rglob("*.dcm"))
    assert {"sr_001.dcm", "sc_001.dcm", "seg_001.dcm", "report_pdf.dcm"} <= set(kinds), kinds
    assert "DICOM file(s)" in output


def test_predict_send_implies_dicom_and_sends(scans: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    from pynetdicom import AE, StoragePresentationContexts, evt

    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPClassUID))
        return 0x0000

    ae = AE(ae_title="TESTPACS")
    ae.require_called_aet = True
    ae.supported_contexts = StoragePresentationContexts
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        port = int(server.server_address[1])
        out = tmp_path / "out"
        code, output = _invoke(*_base(scans / "p1", out, models, "--segmenter", str(models[1]), "--no-pdf",
                                      "--send", f"127.0.0.1:{port}", "--called-aet", "TESTPACS", "--aet", "ME"))
        assert code == 0, output
        n = len(list((out / "dicom").rglob("*.dcm")))
        assert n >= 4 and len(received) == n and f"sent{n}/{n}" in _flat(output)
    finally:
        server.shutdown()
    # a PACS that does not answer: listed, exit 0 unless --fail-on-error
    code, output = _invoke(*_base(scans / "p1", tmp_path / "o2", models, "--no-lungs", "--no-pdf", "--send",
                                  f"127.0.0.1:{port}", "--fail-on-error"))
    assert code == 1 and "not sent" in output


def test_report_errors_are_listed_and_fail_only_with_fail_on_error(scans: Path, models: tuple[Path, Path],
                                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrtriage.report import batch
    from cxrtriage.report.batch import ReportSummary, StudyOutput

    def half_broken(results_dir: Any, **kw: Any) -> ReportSummary:
        d = Path(results_dir)
        return ReportSummary(results_dir=d, index=d / "report" / "index.html",
                             studies=(StudyOutput(key="k", slug="s", errors=("s: report failed (boom)",)),))

    monkeypatch.setattr(batch, "build_reports", half_broken)  # imported when a run writes reports
    code, output = _invoke(*_base(scans, tmp_path / "a", models, "--report", "--no-lungs"))
    assert code == 0 and "s: report failed (boom)" in output and "1 error(s)" in output
    code, output = _invoke(*_base(scans, tmp_path / "b", models, "--report", "--no-lungs", "--fail-on-error"))
    assert code == 1 and "1 report error(s)" in output


def test_a_pacs_that_cannot_be_reached_is_one_warning_with_its_cause(scans: Path, models: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, output = _invoke(*_base(scans / "p1", tmp_path / "o", models, "--no-lungs", "--no-pdf", "--send",
                                  f"127.0.0.1:{port}"))
    assert code == 0, output
    text = " ".join(output.split())
    warnings = [w for w in text.split("warning: ")[1:] if "not sent" in w]
    # every DICOM result failed for one reason: one line, the cause said once (was: a line per file, "not sent (not
    # sent: association aborted ...)", and "Connection refused" only in pynetdicom's ERROR lines)
    assert len(warnings) == 1 and warnings[0].count("not sent") == 1, output
    assert f"not sent: connection refused by 127.0.0.1:{port}; is the PACS listening there?" in warnings[0]
    assert "ERROR" not in output and "TCP Initialisation" not in output


def test_a_report_that_fails_is_said_once(scans: Path, models: tuple[Path, Path], tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrtriage.errors import OutputError
    from cxrtriage.report import batch

    def full_disk(view: Any) -> str:
        raise OutputError("s.html: cannot write it (no space left on device); free some space")

    monkeypatch.setattr(batch.html_writer, "render_study_html", full_disk)
    code, output = _invoke(*_base(scans, tmp_path / "a", models, "--report", "--no-lungs", "--no-pdf"))
    assert code == 0, output
    # once, as a `warning:` line with the cause (was: a WARNING log line too, per study)
    assert output.count("report failed") == output.count("warning: ") >= 1 and "WARNING" not in output, output

    def broken(results_dir: Any, **kw: Any) -> Any:
        raise OSError("the results cannot be read")

    monkeypatch.setattr(batch, "build_reports", broken)
    code, output = _invoke(*_base(scans, tmp_path / "b", models, "--report", "--no-lungs", "--no-pdf"))
    assert code == 0 and output.count("reports not written") == 1 and "WARNING" not in output, output


def test_bad_send_or_policy_exit_before_scoring(scans: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    code, output = _invoke(*_base(scans, tmp_path / "a", models, "--send", "pacs-without-port"))
    assert code == 4 and "expected HOST:PORT" in output and not (tmp_path / "a").exists()
    code, output = _invoke(*_base(scans, tmp_path / "b", models, "--policy", str(tmp_path / "nope.toml")))
    assert code == 4 and "policy file not found" in output and not (tmp_path / "b").exists()


@pytest.mark.data
def test_real_models_on_sample_and_nih_images(shared_data: Path, repo_root: Path, tmp_path: Path) -> None:
    """The shipped classifier and segmenter on RG1 + 12 NIH images with --lungs: no quality false alarm."""
    folder = tmp_path / "in"
    folder.mkdir()
    for p in sorted((shared_data / "nih14" / "images").glob("*.png"))[:12]:
        (folder / p.name).symlink_to(p)
    (folder / "rg1.dcm").symlink_to(repo_root / "sample_data" / "cxr_pa_rg1_half_explicit.dcm")
    out = tmp_path / "out"
    code, output = _invoke("predict", str(folder), "--out", str(out), "--lungs", "--workers", "1")
    assert code == 0, output
    rows = _rows(out)
    assert len(rows) == 13 and all(r["status"] == "scored" for r in rows.values())
    assert {n: r["quality"] for n, r in rows.items() if r["quality"] != "ok"} == {}
    assert all(r["priority"] != "not_assessed" for r in rows.values())
    assert all(0.1 < int(r["lung_area_px"]) / (int(r["rows"]) * int(r["columns"])) < 0.6 for r in rows.values())
    run = json.loads((out / "run.json").read_text())
    assert run["segmenter"]["name"] == "lung-segmenter" and run["model"]["name"] == "cxr-classifier"
    assert run["policy"]["not_covered_by_model"] == ["pneumothorax", "edema"]


def test_a_new_run_removes_the_earlier_reports_but_not_the_users_files_beside_them(
        scans: Path, models: tuple[Path, Path], tmp_path: Path) -> None:
    """As `cxrtriage report` does: the README tells users to keep report/, so a file of theirs there outlives a run."""
    out = tmp_path / "out"
    code, output = _invoke(*_base(scans, out, models, "--report", "--no-lungs", "--no-pdf"))
    assert code == 0, output
    report = out / "report"
    earlier = sorted(p.name for p in report.iterdir())
    assert "index.html" in earlier and any(n.endswith(".html") and n != "index.html" for n in earlier), earlier
    (report / "reading.html").write_text("the radiologist's own page")
    (report / "mine").mkdir()
    code, output = _invoke(*_base(scans / "p2", out, models))  # no --report now: nothing of the earlier pages stays
    assert code == 0, output
    assert sorted(p.name for p in report.iterdir()) == ["mine", "reading.html"]
    assert (report / "reading.html").read_text() == "the radiologist's own page"
    assert "reading.html" in _flat(output) and "didnotwrite" in _flat(output)

    (report / "reading.html").unlink()
    (report / "mine").rmdir()
    code, output = _invoke(*_base(scans, out, models, "--report", "--no-lungs", "--no-pdf"))
    assert code == 0, output
    code, output = _invoke(*_base(scans / "p2", out, models))
    assert code == 0, output
    assert not report.exists()  # only the writer's files were there: the folder goes with them, as before


def test_send_with_no_dicom_input_says_that_no_dicom_result_was_made(models: tuple[Path, Path], tmp_path: Path) -> None:
    """A PNG folder with --send: nothing was made or sent, and nothing said so."""
    png = tmp_path / "png"
    png.mkdir()
    import cv2

    cv2.imwrite(str(png / "chest.png"), (_pixels(64, 64, 3) // 16).astype(np.uint8))
    code, output = _invoke("predict", str(png), "--out", str(tmp_path / "o"), "--model", str(models[0]), "--workers",
                           "0", "--no-lungs", "--no-pdf", "--send", "127.0.0.1:1")
    assert code == 0, output
    assert "noDICOMfile:DICOMresults(and--send)areforscoredDICOMinputsonly" in _flat(output)
