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
from factories import require_tool
from report_fixtures import LABELS, SEGMENTER_SEAL, dciodvfy, make_results

from cxrtriage.model.manifest import load_manifest
from cxrtriage.report.batch import ReportSummary, build_reports
from cxrtriage.report.dicom_common import (
    FINDING_CODES,
    PRIVATE_SCHEME,
    AlgorithmInfo,
    finding_code,
    private_code,
    result_uids,
    save,
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
    seal = load_manifest(built.results_dir.parent / "models" / "tiny" / "manifest.json").integrity
    assert f"manifest_integrity={seal}" in params  # which manifest (thresholds, calibration, labels) decided
    assert f"manifest_integrity={SEGMENTER_SEAL}" in params  # the lung-area group names the segmenter's
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
    algorithm = seg.get_segment_description(1).SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmParameters == f"manifest_integrity={SEGMENTER_SEAL}"


def test_secondary_capture_is_a_marked_jpeg_compressed_colour_picture(built: ReportSummary) -> None:
    path = _files(built, STUDY_A)["sc_001"]
    ds = pydicom.dcmread(path)
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "YES"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGBaseline8Bit
    assert ds.PhotometricInterpretation == "YBR_FULL_422" and ds.SamplesPerPixel == 3
    assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
    raw = ds.Rows * ds.Columns * 3
    assert float(ds.LossyImageCompressionRatio) > 3 and path.stat().st_size < raw / 3  # compressed, and says by how much
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


def _source(tmp_path: Path, name: str = "src.dcm", **attrs: Any) -> Any:
    """A source CR written and read back as the batch does (``read_source``), with ``attrs`` set."""
    from factories import write_dicom

    from cxrtriage.report.dicom_common import read_source

    return read_source(write_dicom(tmp_path / name, rows=40, cols=36, **attrs))


def _all_four(source: Any) -> dict[str, Any]:
    from cxrtriage.report.dicom_sc import build_sc
    from cxrtriage.report.dicom_seg import build_seg
    from cxrtriage.report.dicom_sr import build_sr

    algo = AlgorithmInfo("m", "1", "abc")
    labels = np.zeros((int(source.Rows), int(source.Columns)), np.uint8)
    labels[5:30, 4:15], labels[5:30, 20:32] = 1, 2
    return {
        "sr": build_sr(source, (), algo, lung_area_mm2=120.0),
        "sc": build_sc(source, np.zeros((int(source.Rows), int(source.Columns) + 8, 3), np.uint8), algo),
        "seg": build_seg(source, labels, ("background", "right_lung", "left_lung"), algo),
        "pdf": build_encapsulated_pdf([source], b"%PDF-1.4 x\n%%EOF\n", algo),
    }


def test_every_object_carries_the_sources_whole_patient_and_study_modules(tmp_path: Path) -> None:
    # attributes of the Patient, General Study and Patient Study modules, including some
    # that only a copy of the whole modules (highdicom's) carries
    extra = {"OtherPatientNames": "Roe^Jane", "PatientState": "stable",
             "StudyDescription": "XR CHEST PA", "NameOfPhysiciansReadingStudy": "Reader^A", "PatientAge": "065Y",
             "AdmittingDiagnosesDescription": "cough", "SpecificCharacterSet": "ISO_IR 192",
             "PatientName": "Müller^Jürgen", "PatientSex": "M"}
    source = _source(tmp_path, **extra)
    for kind, ds in _all_four(source).items():
        for kw, value in extra.items():
            assert str(ds.get(kw)) == value, (kind, kw)
        for kw in ("PatientBirthDate", "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName"):
            assert kw in ds and not ds[kw].value, (kind, kw)  # Type 2, absent in the source: present and empty
        assert ds.StudyInstanceUID == source.StudyInstanceUID, kind
        path = tmp_path / f"{kind}.dcm"
        save(ds, path)
        errors, _ = dciodvfy(path)
        assert errors == [], (kind, errors)


def test_pdf_without_a_source_character_set_is_utf8_and_highdicom_writes_its_file_meta(tmp_path: Path) -> None:
    ds = _all_four(_source(tmp_path))["pdf"]
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.file_meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1"
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


@pytest.mark.parametrize(
    ("attrs", "orientation", "laterality", "image_laterality"),
    [
        ({"PatientOrientation": ["L", "F"]}, ["L", "F"], None, None),
        ({}, "", None, None),  # unknown: empty (Type 2), never a made-up value
        ({"PatientOrientation": ["LP", "F"]}, ["LP", "F"], None, None),  # oblique: highdicom cannot take it
        ({"PatientOrientation": ["L", ""], "body_part": None}, "", "", None),  # half-known is unknown; no body part
        ({"Laterality": "R", "body_part": None}, "", "R", None),
        ({"ImageLaterality": "L"}, "", None, "L"),  # a CHEST series must not carry Laterality (dciodvfy)
    ],
)
def test_sc_carries_the_sources_orientation_and_laterality(
    tmp_path: Path, attrs: dict[str, Any], orientation: Any, laterality: str | None, image_laterality: str | None
) -> None:
    from cxrtriage.report.dicom_sc import build_sc

    source = _source(tmp_path, **attrs)
    sc = build_sc(source, np.zeros((40, 50, 3), np.uint8), AlgorithmInfo("m", "1"))
    value = sc.PatientOrientation
    assert (list(value) if orientation else value) == orientation
    assert sc.get("Laterality") == laterality
    assert sc.get("ImageLaterality") == image_laterality
    assert sc.get("BodyPartExamined") == source.get("BodyPartExamined")
    path = tmp_path / "sc.dcm"
    save(sc, path)
    errors, _ = dciodvfy(path)
    assert errors == [], errors


def test_each_source_file_is_parsed_once_for_all_its_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Header, picture, SR, SC, SEG and the PDF of a study come from one parse of each DICOM source."""
    results = make_results(tmp_path)
    reads: list[str] = []
    real = pydicom.dcmread

    def counting(fp: Any, *args: Any, **kwargs: Any) -> Any:
        reads.append(str(getattr(fp, "name", fp)))  # a path, or an open file (cxrtriage.io reads headers so)
        return real(fp, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    summary = build_reports(results, dicom=True)
    assert summary.dicom_files and not summary.errors
    sources = [r for r in reads if r.endswith(".dcm") and "/dicom/" not in r]
    assert sources and len(sources) == len(set(sources)), sources


def test_the_results_of_a_studys_images_are_numbered_in_their_series(tmp_path: Path) -> None:
    """One series holds a study's SRs (SCs, SEGs): each instance takes its image's place in the study."""
    from cxrtriage.report.dicom_sc import build_sc
    from cxrtriage.report.dicom_seg import build_seg
    from cxrtriage.report.dicom_sr import build_sr

    algo = AlgorithmInfo("m", "1", "abc")
    source = _source(tmp_path, "a.dcm")
    labels = np.zeros((int(source.Rows), int(source.Columns)), np.uint8)
    labels[5:30, 4:15] = 1
    built = [build_sr(source, (), algo, lung_area_mm2=120.0, instance_number=3),
             build_sc(source, np.zeros((int(source.Rows), int(source.Columns) + 8, 3), np.uint8), algo,
                      instance_number=3),
             build_seg(source, labels, ("background", "lung"), algo, instance_number=3)]
    assert [int(ds.InstanceNumber) for ds in built] == [3, 3, 3]
    assert int(_all_four(source)["sr"].InstanceNumber) == 1  # the default
