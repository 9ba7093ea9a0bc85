"""DICOM results: valid per dciodvfy, in the source study, readable back (SR findings, SEG mask, SC, PDF)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import cv2
import highdicom as hd
import numpy as np
import pydicom
import pytest
from report_fixtures import LABELS, dciodvfy, make_results, require_tool

from cxrtriage.report.batch import ReportSummary, build_reports
from cxrtriage.report.dicom_common import (
    FINDING_CODES,
    PRIVATE_SCHEME,
    AlgorithmInfo,
    finding_code,
    private_code,
    result_uids,
)
from cxrtriage.report.dicom_pdf import build_encapsulated_pdf

STUDY_A = "1.2.826.0.1.3680043.8.498.1001"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> ReportSummary:
    return build_reports(make_results(tmp_path_factory.mktemp("dcm")), pdf=False, dicom=True)


def _files(summary: ReportSummary, study_suffix: str) -> dict[str, Path]:
    study = next(s for s in summary.studies if s.key.endswith(study_suffix))
    return {p.stem: p for p in study.dicom}


def _walk(items: Any) -> list[Any]:
    out = []
    for it in items:
        out.append(it)
        out.extend(_walk(it.get("ContentSequence", [])))
    return out


def test_every_dicom_object_passes_dciodvfy(built: ReportSummary) -> None:
    files = built.dicom_files
    assert sorted(p.name for p in files) == sorted(["sr_001.dcm", "sc_001.dcm", "seg_001.dcm", "report_pdf.dcm"] * 2)
    for f in files:
        errors, warnings = dciodvfy(f)
        assert errors == [], f"{f}: {errors}"
        # the only warnings left: our private coding scheme, and DICOMDIR hints about the source's own empty values
        assert all("99CXRTRIAGE" in w or "DICOMDIR" in w for w in warnings), warnings
    assert built.errors == []
    assert any("not a DICOM input" in n for n in built.notes)  # the PNG study: reports, no DICOM


def test_dciodvfy_check_can_fail(built: ReportSummary, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_files(built, STUDY_A)["sc_001"])
    del ds.SeriesInstanceUID
    del ds.Modality
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    errors, _ = dciodvfy(bad)
    assert errors


def test_results_land_in_the_source_study_with_ihe_air_equipment(built: ReportSummary) -> None:
    src = pydicom.dcmread(built.results_dir.parent / "inputs" / "a" / "pa.dcm")
    series = set()
    for f in _files(built, STUDY_A).values():
        ds = pydicom.dcmread(f)
        for kw in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "AccessionNumber", "StudyDate"):
            assert ds.get(kw) == src.get(kw), kw
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.SOPInstanceUID != src.SOPInstanceUID
        series.add(ds.SeriesInstanceUID)
        assert "not for diagnosis" in ds.SeriesDescription
        air = [e for e in ds.ContributingEquipmentSequence
               if e.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
               and e.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"]
        expected = "tiny-segmenter" if f.stem == "seg_001" else "tiny-classifier"
        assert len(air) == 1 and air[0].ManufacturerModelName == expected
        assert any("0.0.1-test" in v for v in air[0].SoftwareVersions)
    assert len(series) == 4  # one series per object type


def test_sr_holds_every_scored_finding_the_model_version_and_the_evidence(built: ReportSummary) -> None:
    sr = hd.sr.srread(_files(built, STUDY_A)["sr_001"])
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33" and sr.VerificationFlag == "UNVERIFIED"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    groups = sr.content.get_image_measurement_groups()
    found: dict[str, tuple[float, str]] = {}
    for g in groups:
        for m in g.get_measurements():
            if m.name.value == "122157":
                evals = [q for q in g.get_qualitative_evaluations() if q.name == g.finding_type]
                found[g.finding_type.meaning] = (m.value, evals[0].value.meaning)
                assert m.unit.value == "{probability}"
    assert found["Pneumothorax"] == (pytest.approx(0.81), "Present")
    assert found["Pleural effusion"] == (pytest.approx(0.12), "Absent")
    assert found["strange_new_finding"] == (pytest.approx(0.55), "Present")  # private 99CXRTRIAGE code
    lung = [g for g in groups if g.finding_type.value == "39607008"]
    area = [m for m in lung[0].get_measurements() if m.name.value == "42798000"][0]
    assert area.unit.value == "mm2" and area.value > 0
    items = _walk(sr.ContentSequence)
    versions = {i.TextValue for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "111003"}
    names = {i.TextValue for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "111001"}
    params = {i.TextValue for i in items if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "111002"}
    assert "0.0.1-test" in versions and "tiny-classifier" in names
    assert any(p.startswith("threshold.pneumothorax=0.5000 (balanced)") for p in params)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    src = pydicom.dcmread(built.results_dir.parent / "inputs" / "a" / "pa.dcm")
    assert evidence.ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_seg_stores_the_lung_mask_exactly(built: ReportSummary) -> None:
    seg = hd.seg.segread(_files(built, STUDY_A)["seg_001"])
    src = pydicom.dcmread(built.results_dir.parent / "inputs" / "a" / "pa.dcm")
    assert seg.SegmentationType == "BINARY"
    labels = [seg.get_segment_description(n).SegmentLabel for n in seg.get_segment_numbers()]
    assert labels == ["right_lung", "left_lung"]
    codes = [seg.get_segment_description(n).SegmentedPropertyTypeCodeSequence[0].CodeValue for n in seg.get_segment_numbers()]
    assert codes == ["3341006", "44029006"]
    got = seg.get_pixels_by_source_instance([src.SOPInstanceUID], combine_segments=True)[0]
    expected = cv2.imread(str(built.results_dir / "masks" / "a1.png"), cv2.IMREAD_UNCHANGED)
    assert got.shape == expected.shape and np.array_equal(got, expected)
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID


def test_secondary_capture_is_a_marked_rgb_picture(built: ReportSummary) -> None:
    ds = pydicom.dcmread(_files(built, STUDY_A)["sc_001"])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "YES"
    assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(
        built.results_dir.parent / "inputs" / "a" / "pa.dcm").SOPInstanceUID
    rgb = ds.pixel_array
    assert rgb.ndim == 3 and rgb.shape[2] == 3 and rgb.shape[1] > rgb.shape[0]  # legend panel on the right
    panel = rgb[:, int(rgb.shape[1] * 0.8):]
    assert (panel > 150).any(axis=2).mean() > 0.005  # legend text
    red = (panel[:, :, 0] > 200) & (panel[:, :, 1] < 120)
    assert red.sum() > 20  # a finding above threshold is written in red
    hsv = cv2.cvtColor(np.ascontiguousarray(panel), cv2.COLOR_RGB2HSV)
    bar_rows = [r for r in range(hsv.shape[0]) if (hsv[r, :, 1] > 150).mean() > 0.5
                and len(np.unique(hsv[r, :, 0][hsv[r, :, 1] > 150] // 10)) >= 6]
    assert bar_rows  # the turbo colour bar of the map (drawn from its .npy) is in the legend
    # study B has overlay PNGs but no .npy maps: its SC shows the explain step's side-by-side picture instead
    b = pydicom.dcmread(_files(built, "2002")["sc_001"])
    assert b.Columns > 2 * b.Rows and list(b.ImageType) == ["DERIVED", "SECONDARY"]


def test_encapsulated_pdf_wraps_a_renderable_report(built: ReportSummary, tmp_path: Path) -> None:
    ds = pydicom.dcmread(_files(built, STUDY_A)["report_pdf"])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and ds.Modality == "DOC"
    data = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert data.startswith(b"%PDF") and data.rstrip().endswith(b"%%EOF")
    (tmp_path / "r.pdf").write_bytes(data)
    subprocess.run([require_tool("pdftoppm"), "-r", "20", "-png", "-f", "1", "-l", "1", str(tmp_path / "r.pdf"),
                    str(tmp_path / "p")], check=True, capture_output=True, timeout=60)
    assert list(tmp_path.glob("p-*.png"))


def test_uids_are_stable_and_change_with_parameters(built: ReportSummary) -> None:
    uids = {p: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in built.dicom_files}
    again = build_reports(built.results_dir, pdf=False, dicom=True)  # a re-run overwrites, never duplicates
    assert {p: pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in again.dicom_files} == uids
    src = pydicom.dcmread(built.results_dir.parent / "inputs" / "a" / "pa.dcm", stop_before_pixels=True)
    a = AlgorithmInfo("m", "1", "s", {"threshold.x": "0.5000 (balanced)"})
    b = AlgorithmInfo("m", "1", "s", {"threshold.x": "0.2000 (rule_out)"})
    assert result_uids("sr", src, a)[0] == result_uids("sr", src, b)[0]  # same series
    assert result_uids("sr", src, a)[1] != result_uids("sr", src, b)[1]  # new thresholds: a new instance
    assert result_uids("sr", src, a)[1] != result_uids("sc", src, a)[1]


def test_encapsulated_pdf_modality_is_configurable(built: ReportSummary) -> None:
    src = pydicom.dcmread(built.results_dir.parent / "inputs" / "a" / "pa.dcm", stop_before_pixels=True)
    algo = AlgorithmInfo("m", "1")
    assert build_encapsulated_pdf([src], b"%PDF-1.4 x", algo, modality="ot").Modality == "OT"
    with pytest.raises(ValueError, match="not a PDF"):
        build_encapsulated_pdf([src], b"hello", algo)
    with pytest.raises(ValueError, match="modality"):
        build_encapsulated_pdf([src], b"%PDF-1.4 x", algo, modality="")


def test_finding_codes() -> None:
    assert finding_code("Pneumothorax").value == "36118008"
    assert finding_code("pleural-effusion").meaning == "Pleural effusion"
    c = finding_code("a_very_long_unknown_finding_name")
    assert c.scheme_designator == PRIVATE_SCHEME and len(c.value) <= 16
    assert private_code("a_very_long_unknown_finding_name_2").value != c.value
    assert all(len(v[0]) <= 16 for v in FINDING_CODES.values())
    assert set(LABELS) - set(FINDING_CODES) == {"strange_new_finding"}
