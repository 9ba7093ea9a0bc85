"""HTML reports: self-contained, complete, escaped, de-identified, and rendered by headless Chromium."""

from __future__ import annotations

import json
import re
import subprocess
from html import unescape
from pathlib import Path

import cv2
import pytest
from factories import require_tool
from report_fixtures import LABELS, make_results

from cxrtriage.report.batch import ReportSummary, build_reports
from cxrtriage.report.view import DISCLAIMER

STUDY_A = "1.2.826.0.1.3680043.8.498.1001"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ReportSummary:
    return build_reports(make_results(tmp_path_factory.mktemp("html")), pdf=False)


def _html(summary: ReportSummary, key_suffix: str) -> str:
    study = next(s for s in summary.studies if s.key.endswith(key_suffix))
    assert study.html is not None
    return study.html.read_text(encoding="utf-8")


def test_study_report_and_its_pictures_are_self_contained_in_the_report_folder(built: ReportSummary) -> None:
    study = next(s for s in built.studies if s.key.endswith(STUDY_A))
    assert study.html is not None
    html = study.html.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"]*)"', html)
    pictures = [r for r in refs if r.endswith(".jpg")]
    others = [r for r in refs if not (r.endswith(".jpg") or r.endswith(".html") or r.startswith("#"))]
    assert others == []  # no URL, no file outside the report folder
    assert "<link" not in html and "<script" not in html and "url(" not in html
    assert len(pictures) == 4  # PA with lung outline, two heatmaps, the excluded lateral
    assert all("/" not in r and "\\" not in r and r.startswith(study.slug) for r in pictures)  # beside the page
    decoded = [cv2.imread(str(study.html.parent / r), cv2.IMREAD_COLOR) for r in pictures]
    assert all(d is not None and d.std() > 5 and max(d.shape[:2]) <= 640 for d in decoded)
    assert "data:image/" not in html  # each picture is stored once, as a file (the PDF embeds the same bytes)


def test_study_report_says_everything_the_reader_needs(built: ReportSummary) -> None:
    html = _html(built, STUDY_A)
    assert html.count(DISCLAIMER) == 2
    for text in ("Doe Jane", "PID-123", "1960-01-02", "2025-03-10", "ACC-9", "XR CHEST PA", STUDY_A):
        assert text in html
    for label in LABELS:
        assert f"<td>{label}</td>" in html
    assert re.search(r"<td>pneumothorax</td><td>0\.810</td><td>0\.500</td><td>balanced \(Youden\)</td>"
                     r"<td class=\"above\">above", html)
    assert re.search(r"<td>effusion</td><td>0\.120</td><td>0\.500</td>.*?class=\"below\">below</td>"
                     r"<td>not recorded</td><td>80\.0 %</td><td>80\.0 %", html)  # a run.json without populations
    assert "urgent" in html and "pneumothorax 0.81 &gt;= 0.50" in html
    assert "image is slightly rotated" in html
    assert "lateral view (ViewPosition LL): not a frontal chest" in html
    row = json.loads((built.results_dir / "results.jsonl").read_text().splitlines()[0])
    assert f"{row['lung_area_mm2']:,.0f} mm² ({row['lung_area_mm2'] / 100:,.1f} cm²)" in html
    for text in ("tiny-classifier", "0.0.1-test", "unit tests only", "none (random weights)", "auroc.pneumothorax", "0.910"):
        assert text in html


def test_header_values_are_escaped(tmp_path: Path) -> None:
    out = make_results(tmp_path, patient_name="<script>alert(1)</script>^X")
    summary = build_reports(out, pdf=False)
    html = _html(summary, STUDY_A)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_index_lists_worklist_failures_exclusions_and_provenance(built: ReportSummary) -> None:
    index = built.index.read_text(encoding="utf-8")
    links = re.findall(r'<a href="([^"]+\.html)">HTML</a>', index)
    assert links[0] == f"{STUDY_A}.html" and links[1].startswith("png_case-") and len(links) == 4
    assert all((built.index.parent / link).is_file() for link in links)
    assert "not a readable DICOM or image file" in index and "lateral view (ViewPosition LL)" in index
    assert "<b>urgent</b>: 2" in index and "<b>routine</b>: 1" in index
    assert "images failed: 1" in index and "images excluded: 1" in index and "images scored: 3" in index
    assert "2025-03-12T10:00:00Z" in index and "0.1.0" in index
    assert DISCLAIMER in index


_BASE64_PAYLOAD = re.compile(r"(data:[\w.+-]+/[\w.+-]+;base64,)[A-Za-z0-9+/=\s]*")


def _html_text(page: str) -> str:
    """The page without the base64 payloads of inlined pictures (random letters that spell "Doe" now and then), and
    with character references decoded so an escaped identifier ("M&#252;ller") is still found; everything else,
    attributes and alt texts included, stays."""
    return unescape(_BASE64_PAYLOAD.sub(r"\1", page))


def test_deidentified_reports_hide_identifiers_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_PSEUDONYM_KEY", "a-site-secret-of-sixteen+")
    out = make_results(tmp_path)
    summary = build_reports(out, pdf=True, deidentify=True)
    pages = [s.html.read_text(encoding="utf-8") for s in summary.studies if s.html]
    pages.append(summary.index.read_text(encoding="utf-8"))
    assert '.jpg"' in "".join(pages)  # there are pictures (files named from the pseudonymous slug, checked below)
    texts = [_html_text(p) for p in pages]
    sample = '<p title="Doe">M&#252;ller</p><img alt="Doe" src="data:image/jpeg;base64,AADoe+/A=">'
    assert _html_text(sample) == '<p title="Doe">Müller</p><img alt="Doe" src="data:image/jpeg;base64,">'
    exe = require_tool("pdftotext")
    for s in summary.studies:
        assert s.pdf is not None
        texts.append(subprocess.run([exe, str(s.pdf), "-"], capture_output=True, text=True, check=True).stdout)
    blob = "\n".join(texts)
    for ident in ("Doe", "PID-123", "PID-456", "Müller", "1960-01-02", "2025-03-10", "ACC-9", STUDY_A, "inputs/a/pa.dcm"):
        assert ident not in blob, ident
    assert "ANON-" in blob and "removed (de-identified)" in blob
    assert all(p.name.startswith(("study-", "index")) for p in (out / "report").iterdir())


def _chromium(args: list[str], page: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    exe = require_tool("chromium")
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--enable-logging=stderr", "--v=0", *args, page.as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


HARNESS = ("<script>window.addEventListener('load',()=>{const i=[...document.images];"
           "document.body.setAttribute('data-decoded',i.filter(x=>x.complete&&x.naturalWidth>0).length+'/'+i.length);});"
           "</script></body>")


def _console_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ":CONSOLE" in ln]


@pytest.mark.slow
def test_chromium_renders_the_report_with_all_images_and_no_console_errors(built: ReportSummary, tmp_path: Path) -> None:
    page = next(s.html for s in built.studies if s.key.endswith(STUDY_A))
    assert page is not None
    probe = page.with_name("probe.html")  # a copy beside it (its pictures are files there), with a test-only probe
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", HARNESS), encoding="utf-8")
    try:
        dom = _chromium(["--virtual-time-budget=5000", "--dump-dom"], probe, tmp_path)
    finally:
        probe.unlink()
    assert 'data-decoded="4/4"' in dom.stdout, dom.stdout[-500:]
    assert _console_lines(dom.stderr) == []
    shot = tmp_path / "shot.png"
    run = _chromium(["--window-size=1200,1800", "--hide-scrollbars", f"--screenshot={shot}"], page, tmp_path)
    assert _console_lines(run.stderr) == []
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1800, 1200)
    assert img.std() > 20  # not blank
    hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
    assert (hsv[:, :, 1] > 120).mean() > 0.01  # coloured pixels: the heatmap figures and outlines are visible
    # the same checks catch a broken page (so they can fail)
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>nosuchfunction()</script><img src='data:image/png;base64,AAAA'>" + HARNESS)
    broken = _chromium(["--virtual-time-budget=3000", "--dump-dom"], bad, tmp_path)
    assert 'data-decoded="0/1"' in broken.stdout and any("nosuchfunction" in ln for ln in _console_lines(broken.stderr))


def test_files_that_are_no_image_are_in_no_study_but_listed_in_the_index(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from cxrtriage.report.study import load_results

    out = make_results(tmp_path)
    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    lateral = next(r for r in map(json.loads, lines) if r["path"].endswith("lat.dcm"))
    folder = Path(lateral["path"]).parent
    # As predict writes them: excluded, and no study key (the README in the study's folder, an SR of the study).
    readme = {**lateral, "path": str(folder / "README.md"), "reason": "text file (e.g. README, CSV, JSON), not an image",
              "input_kind": "unknown", "study_key": None, "study_instance_uid": None, "view": None}
    sr = {**lateral, "path": str(folder / "sr.dcm"), "reason": "non-image object: Basic Text SR Storage",
          "study_key": None, "view": None}
    (out / "results.jsonl").write_text("\n".join([*lines, json.dumps(readme), json.dumps(sr)]) + "\n", encoding="utf-8")

    bundle = load_results(out)
    assert [len(s.images) for s in bundle.studies] == [2, 1, 1, 1]  # the lateral stays an image of its study
    assert not any(i.path.name in ("README.md", "sr.dcm") for s in bundle.studies for i in s.images)
    assert {i.path.name for i in bundle.images} >= {"README.md", "sr.dcm"}  # still among the results' files

    summary = build_reports(out, pdf=False)
    page = _html(summary, STUDY_A)
    assert "README.md" not in page and "sr.dcm" not in page and "lat.dcm" in page
    index = summary.index.read_text(encoding="utf-8")
    assert str(folder / "README.md") in index and "text file (e.g. README, CSV, JSON), not an image" in index
    assert "non-image object: Basic Text SR Storage" in index
    assert "images excluded: 1" in index and "files that are not images: 2" in index

    monkeypatch.setenv("CXRTRIAGE_PSEUDONYM_KEY", "a-site-secret-of-sixteen+")
    hidden = build_reports(out, pdf=False, deidentify=True).index.read_text(encoding="utf-8")
    assert "file 1 (not an image)" in hidden and "file 2 (not an image)" in hidden
    assert "README.md" not in hidden and "sr.dcm" not in hidden
