"""Coarse source facts from the DICOM header (device, site, month, age band, sex) and their results columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import make_cxr_dataset, make_tiny_classifier, read_jsonl, write_dicom

from cxrtriage.io.dicom.source import AGE_BANDS, age_band, source_facts
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict
from cxrtriage.results import SOURCE_COLUMNS


@pytest.mark.parametrize(("years", "band"), [
    (0.2, "<1"), (1.0, "1-5"), (5.99, "1-5"), (6, "6-17"), (17.9, "6-17"), (18, "18-39"), (45, "40-59"),
    (74.5, "60-74"), (75, "75+"), (110, "75+"), (None, ""), (-1, ""), (250, ""),
])
def test_age_bands(years: float | None, band: str) -> None:
    assert age_band(years) == band


def test_bands_are_contiguous() -> None:
    assert all(a[2] == b[1] for a, b in zip(AGE_BANDS, AGE_BANDS[1:], strict=False))


def test_facts_from_a_full_header() -> None:
    ds = make_cxr_dataset(Manufacturer="ACME Medical", ManufacturerModelName="DR-9000", InstitutionName="General",
                          StudyDate="20240315", PatientAge="045Y", PatientSex="f", PatientBirthDate="19790101")
    assert source_facts(ds) == {"manufacturer": "ACME Medical", "device_model": "DR-9000", "institution": "General",
                                "study_month": "2024-03", "age_band": "40-59", "sex": "F"}


def test_age_from_the_birth_date_and_other_dates_when_study_date_is_missing() -> None:
    ds = make_cxr_dataset(PatientBirthDate="20200610", SeriesDate="20230601")  # 2.98 years at the series
    facts = source_facts(ds)
    assert facts["study_month"] == "2023-06" and facts["age_band"] == "1-5"
    assert source_facts(make_cxr_dataset(PatientAge="018M"))["age_band"] == "1-5"
    assert source_facts(make_cxr_dataset(PatientAge="030W"))["age_band"] == "<1"


def test_malformed_or_absent_values_give_empty_facts() -> None:
    ds = make_cxr_dataset(StudyDate="2024-13-45", PatientAge="abc", PatientBirthDate="19450607x", PatientSex="unknown")
    assert source_facts(ds) == {"manufacturer": "", "device_model": "", "institution": "", "study_month": "",
                                "age_band": "", "sex": ""}
    born_after = make_cxr_dataset(StudyDate="20200101", PatientBirthDate="20210101")
    assert source_facts(born_after)["age_band"] == ""


def test_predict_writes_the_source_columns_and_no_identifier(tmp_path: Path) -> None:
    model = make_tiny_classifier(tmp_path / "m")
    write_dicom(tmp_path / "in" / "a.dcm", Manufacturer="ACME", ManufacturerModelName="DR-1", InstitutionName="Site A",
                StudyDate="20240229", PatientAge="067Y", PatientSex="M", PatientBirthDate="19570101")
    from cv2 import imwrite

    imwrite(str(tmp_path / "in" / "b.png"), (np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8))
    run_predict(PredictConfig(inputs=(tmp_path / "in",), out_dir=tmp_path / "out", model=str(model), workers=0))
    rows = {Path(r["path"]).name: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    assert {c: rows["a.dcm"][c] for c in SOURCE_COLUMNS} == {
        "manufacturer": "ACME", "device_model": "DR-1", "institution": "Site A", "study_month": "2024-02",
        "age_band": "60-74", "sex": "M"}
    assert all(rows["b.png"][c] is None for c in SOURCE_COLUMNS)
    text = (tmp_path / "out" / "results.csv").read_text()
    # no birth date or date of service (the age, in years, is triage's column patient_age: 67.0 here)
    assert "1957" not in text and "20240229" not in text and "067Y" not in text
    assert rows["a.dcm"]["patient_age"] == 67.0
