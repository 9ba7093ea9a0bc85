"""The patient's age at the study from DICOM: PatientAge first, else the birth and study dates; never a guess."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import make_cxr_dataset, write_dicom

from cxrtriage.io.dicom import read_header
from cxrtriage.io.dicom.age import age_from_text, patient_age_years


@pytest.mark.parametrize(("text", "years"), [
    ("004Y", 4.0), ("018M", 1.5), ("052W", 1.0), ("365D", 1.0), ("045", 45.0), ("7y", 7.0), (" 061Y ", 61.0),
    ("", None), (None, None), ("abcY", None), ("4.5Y", None), ("200Y", None), ("004X", None),
])
def test_patient_age_text(text: str | None, years: float | None) -> None:
    assert age_from_text(text) == years


def test_age_from_birth_and_study_dates_and_patient_age_wins() -> None:
    ds = make_cxr_dataset(PatientBirthDate="19600101", StudyDate="20210615")
    assert patient_age_years(ds) == pytest.approx(61.45, abs=0.01)
    ds.PatientAge = "060Y"  # the age at the study, by definition: it wins over the dates
    assert patient_age_years(ds) == 60.0


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")  # pydicom's, for the malformed date below
@pytest.mark.parametrize("attrs", [
    {},  # nothing said
    {"PatientBirthDate": "19600101"},  # no date of the study
    {"PatientBirthDate": "20220101", "StudyDate": "20210101"},  # born after the study
    {"PatientBirthDate": "1960-01-01", "StudyDate": "20210101"},  # malformed birth date
    {"PatientBirthDate": "18000101", "StudyDate": "20210101"},  # 221 years: a data-entry error
])
def test_age_unknown_when_the_header_does_not_tell_it(attrs: dict[str, str]) -> None:
    assert patient_age_years(make_cxr_dataset(**attrs)) is None


def test_age_falls_back_to_the_acquisition_date() -> None:
    ds = make_cxr_dataset(PatientBirthDate="20180301", AcquisitionDate="20210301")
    assert patient_age_years(ds) == pytest.approx(3.0, abs=0.01)


def test_header_carries_the_age(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "child.dcm", PatientAge="004Y")
    assert read_header(path).info.patient_age_years == 4.0
    assert read_header(write_dicom(tmp_path / "none.dcm")).info.patient_age_years is None
