"""PDF reports: rendered by poppler, text present, images embedded, non-Latin-1 text never breaks them."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import require_tool
from report_fixtures import make_results

from cxrtriage.report import pdf as pdf_mod
from cxrtriage.report.sources import StudySources
from cxrtriage.report.study import load_results
from cxrtriage.report.view import DISCLAIMER, study_view


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_results(make_results(tmp_path_factory.mktemp("pdf")))


def _render(pdf: bytes, tmp_path: Path, name: str) -> tuple[list[Path], str]:
    path = tmp_path / f"{name}.pdf"
    path.write_bytes(pdf)
    ppm = require_tool("pdftoppm")
    subprocess.run([ppm, "-r", "40", "-png", str(path), str(tmp_path / name)], check=True, capture_output=True, timeout=120)
    text = subprocess.run([require_tool("pdftotext"), str(path), "-"], check=True, capture_output=True, text=True).stdout
    return sorted(tmp_path.glob(f"{name}-*.png")), text


def test_pdf_renders_with_text_and_images(bundle, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sources = StudySources(bundle.studies[0])
    view = study_view(bundle.studies[0], bundle, sources, sources.header(), deidentified=False)
    pages, text = _render(pdf_mod.render_study_pdf(view), tmp_path, "a")
    assert len(pages) >= 2
    first = cv2.imread(str(pages[0]))
    assert first is not None and first.std() > 20
    hsv = cv2.cvtColor(first, cv2.COLOR_BGR2HSV)
    assert (hsv[:, :, 1] > 120).mean() > 0.005  # the coloured lung outline / heatmaps are embedded
    flat = " ".join(text.split())
    for needle in ("Decision support only; not a diagnosis", "Doe Jane", "PID-123", "pneumothorax", "0.810", "above",
                   "balanced (Youden)", "image is slightly rotated", "lateral view", "unit tests only", "Lung area"):
        assert needle in flat, needle
    assert flat.count("qualified clinician must review") >= len(pages)  # the footer repeats it on every page


@pytest.mark.parametrize("unicode_font", [True, False])
def test_non_latin1_text_is_safe_with_either_font(bundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                                                  unicode_font: bool) -> None:
    if not unicode_font:
        monkeypatch.setattr(pdf_mod, "find_unicode_font", lambda: None)
    elif pdf_mod.find_unicode_font() is None:
        pytest.skip("no DejaVu font installed (Debian: fonts-dejavu-core)")
    study = bundle.studies[2]
    sources = StudySources(study)
    header = replace(sources.header(), patient_name="Müller Jürgen 山田太郎 Ωmega “quoted” …")
    view = study_view(study, bundle, sources, header, deidentified=False)
    pages, text = _render(pdf_mod.render_study_pdf(view), tmp_path, "u")
    assert pages
    assert "Müller Jürgen" in text
    if unicode_font:
        assert "Ωmega" in text
    else:
        assert "?mega" in text and '"quoted" ...' in text


def test_latin1_helper() -> None:
    assert pdf_mod.latin1("Café – “x” ≥ 1 … 山") == 'Café - "x" >= 1 ... ?'
    assert DISCLAIMER.startswith("Decision support only; not a diagnosis; a qualified clinician must review")


def test_a_row_of_figures_ends_below_its_longest_caption() -> None:
    """The captions ran into the next row and the findings table: the row's height counted about two lines."""
    from cxrtriage.report.imaging import jpeg_bytes
    from cxrtriage.report.view import Figure

    data = jpeg_bytes(np.full((100, 80, 3), 128, np.uint8))
    long = "Explanation map (gradcam) for 'consolidation', score 0.117 >= threshold 0.080: " * 4
    figs = (Figure("short", data, 80, 100, "a.jpg"), Figure(long, data, 80, 100, "b.jpg"))
    doc = pdf_mod._ReportPDF(DISCLAIMER, None)
    doc.add_page()
    y0 = doc.get_y()
    pdf_mod._figures(doc, figs)
    doc.set_font(doc.family, "", 7)
    lines = doc.multi_cell(58.0, 3.2, doc.t(long), align="L", dry_run=True, output="LINES")
    assert isinstance(lines, list) and len(lines) >= 6
    assert doc.get_y() >= y0 + 58.0 * 100 / 80 + 1 + len(lines) * 3.2
    assert doc.page == 1
    many = figs * 6  # four rows of tall captions: the rows that do not fit go to the next page, whole
    doc2 = pdf_mod._ReportPDF(DISCLAIMER, None)
    doc2.add_page()
    pdf_mod._figures(doc2, many)
    assert doc2.page >= 2 and doc2.get_y() <= doc2.h - doc2.b_margin
