"""The patient's age at the study, from (0010,1010) PatientAge or from the birth date and the study date."""

from __future__ import annotations

import datetime as dt
import re

from pydicom.dataset import Dataset

from cxrtriage.io.dicom.values import get_raw_text

# PS3.5 6.2, VR AS: four characters, nnnD / nnnW / nnnM / nnnY. Some writers drop the leading zeros or the
# unit ("4Y", "45"), which is read too: the unit defaults to years, as in every viewer we know of.
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12.0, "Y": 365.25}
MAX_AGE_YEARS = 130.0  # anything older is a data-entry error, not an age
# Dates tried, in order, for "the day of the study" when PatientAge is absent.
_STUDY_DATES = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def _date(text: str | None) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD; the old ACR-NEMA YYYY.MM.DD too) as a date; None when malformed."""
    if not text:
        return None
    digits = text.strip().replace(".", "")
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def age_from_text(text: str | None) -> float | None:
    """Years from a PatientAge value (``"004Y"``, ``"018M"``, ``"010W"``, ``"003D"``); None when malformed."""
    if not text:
        return None
    m = _AGE.match(text)
    if m is None:
        return None
    years = round(int(m.group(1)) * _DAYS_PER[(m.group(2) or "Y").upper()] / 365.25, 2)
    return years if 0.0 <= years <= MAX_AGE_YEARS else None


def patient_age_years(ds: Dataset) -> float | None:
    """The patient's age in years at the study, or None when the header does not tell it.

    PatientAge first (it is the age at the study by definition); else the study date (or the series,
    acquisition or content date) minus PatientBirthDate. A malformed value, a birth date after the study or an
    age over 130 years count as "not told": triage then treats the age as unknown, never as a guess.
    """
    age = age_from_text(get_raw_text(ds, "PatientAge"))
    if age is not None:
        return age
    born = _date(get_raw_text(ds, "PatientBirthDate"))
    if born is None:
        return None
    for keyword in _STUDY_DATES:
        seen = _date(get_raw_text(ds, keyword))
        if seen is not None:
            years = round((seen - born).days / 365.25, 2)
            return years if 0.0 <= years <= MAX_AGE_YEARS else None
    return None
