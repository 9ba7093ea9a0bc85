"""Coarse facts about where an image came from (device, site, month, age band, sex), for drift monitoring by subgroup.

None of them identifies a patient: manufacturer, device model and institution describe the equipment and the site;
the study date is kept as its month only and the age as a band (``AGE_BANDS``; from ``patient_age_years``, the age
triage uses), so these columns carry no date of birth, exact age or date of service.
"""

from __future__ import annotations

import datetime as dt
import re

from pydicom.dataset import Dataset

from cxrtriage.io.dicom.age import patient_age_years
from cxrtriage.io.dicom.values import get_text

# Age bands, in years: the pediatric range of the default model's pediatric data (Kermany: 1-5) apart, then the adult
# bands the model card reports its subgroups in (18-39, 40-59, 60-74, 75+).
AGE_BANDS: tuple[tuple[str, float, float], ...] = (
    ("<1", 0.0, 1.0), ("1-5", 1.0, 6.0), ("6-17", 6.0, 18.0), ("18-39", 18.0, 40.0), ("40-59", 40.0, 60.0),
    ("60-74", 60.0, 75.0), ("75+", 75.0, 200.0),
)
_DATE_KEYWORDS = ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate")


def age_band(years: float | None) -> str:
    """The band of ``AGE_BANDS`` holding ``years``; "" when unknown or implausible (negative, 200 or more)."""
    if years is None:
        return ""
    for name, lo, hi in AGE_BANDS:
        if lo <= years < hi:
            return name
    return ""


def _date(text: str) -> dt.date | None:
    """A DICOM DA value (YYYYMMDD; the old YYYY.MM.DD form too), or None when malformed."""
    digits = text.replace(".", "").strip()
    if not re.fullmatch(r"\d{8}", digits):
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def study_date(ds: Dataset) -> dt.date | None:
    """The first valid date of StudyDate, SeriesDate, AcquisitionDate, ContentDate."""
    for keyword in _DATE_KEYWORDS:
        d = _date(get_text(ds, keyword))
        if d is not None:
            return d
    return None


def source_facts(ds: Dataset) -> dict[str, str]:
    """``manufacturer``, ``device_model``, ``institution``, ``study_month`` (YYYY-MM), ``age_band``, ``sex`` ("" when
    absent or malformed)."""
    when = study_date(ds)
    sex = get_text(ds, "PatientSex").upper()
    return {
        "manufacturer": get_text(ds, "Manufacturer"),
        "device_model": get_text(ds, "ManufacturerModelName"),
        "institution": get_text(ds, "InstitutionName"),
        "study_month": when.strftime("%Y-%m") if when is not None else "",
        "age_band": age_band(patient_age_years(ds)),
        "sex": sex if sex in ("M", "F", "O") else "",
    }
