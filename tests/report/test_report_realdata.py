"""Reports and DICOM results for a real chest radiograph (NEMA WG04 RG1 CR, MONOCHROME1, spacing 0\\0)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from report_fixtures import dciodvfy, make_results

from cxrtriage.io import read_image
from cxrtriage.report.batch import build_reports
from cxrtriage.report.imaging import display_image


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("name", ["nema_wg04_RG1_UNCR.dcm", "nema_wg04_RG1_J2KI.dcm"])
def test_real_chest_reports_and_valid_dicom(shared_data: Path, tmp_path: Path, name: str) -> None:
    source = shared_data / "dicom" / "cxr_real" / name
    out = make_results(tmp_path, source_image=source)
    summary = build_reports(out, pdf=True, dicom=True)
    assert summary.errors == []
    src = pydicom.dcmread(source, stop_before_pixels=True)
    study = next(s for s in summary.studies if s.key == str(src.StudyInstanceUID))
    assert sorted(p.name for p in study.dicom) == ["report_pdf.dcm", "sc_001.dcm", "seg_001.dcm", "sr_001.dcm"]
    for f in study.dicom:
        errors, _ = dciodvfy(f)
        assert errors == [], f"{f.name}: {errors}"
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    seg = pydicom.dcmread(next(p for p in study.dicom if p.name == "seg_001.dcm"))
    measures = seg.SharedFunctionalGroupsSequence[0].get("PixelMeasuresSequence")
    assert measures is None  # the source's 0\0 ("unknown") spacing is not copied as a spacing of zero
    sc = pydicom.dcmread(next(p for p in study.dicom if p.name == "sc_001.dcm")).pixel_array
    assert sc.shape[0] == src.Rows and sc.std() > 20


@pytest.mark.data
def test_display_of_monochrome1_is_inverted(shared_data: Path) -> None:
    """MONOCHROME1: lungs (low attenuation) must be dark and the spine bright, as a viewer shows them."""
    img = display_image(read_image(shared_data / "dicom" / "cxr_real" / "nema_wg04_RG1_UNCR.dcm"))
    h, w = img.shape
    spine = img[int(h * 0.3):int(h * 0.6), int(w * 0.47):int(w * 0.53)]
    lung = img[int(h * 0.3):int(h * 0.5), int(w * 0.2):int(w * 0.35)]
    assert img.dtype == np.uint8 and spine.mean() > lung.mean() + 30
    assert cv2.Laplacian(img, cv2.CV_32F).std() > 1  # not flat
