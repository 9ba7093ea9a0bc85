"""The patient and study header of a report, read from the source DICOM, and its pseudonymised form."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cxrtriage.report.folder import identified_slug
from cxrtriage.report.pseudonym import pseudonym, pseudonym_key, pseudonym_uid
from cxrtriage.results import clean_text

UNKNOWN = "unknown"
REMOVED = "removed (de-identified)"


@dataclass(frozen=True, slots=True)
class PatientHeader:
    """Patient and study header shown on a report (read from the source DICOM)."""

    patient_name: str = UNKNOWN
    patient_id: str = UNKNOWN
    birth_date: str = UNKNOWN
    sex: str = UNKNOWN
    study_date: str = UNKNOWN
    accession: str = UNKNOWN
    description: str = UNKNOWN
    study_uid: str = UNKNOWN
    deidentified: bool = False


@contextmanager
def quiet_values() -> Iterator[None]:
    """Read DICOM values without pydicom warning (and logging) about invalid ones: the caller handles them, and
    pydicom's messages quote the raw value (a birth date, a UID) on the terminal."""
    saved = pydicom_config.settings.reading_validation_mode
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        pydicom_config.settings.reading_validation_mode = saved


def _text(ds: Dataset, keyword: str) -> str:
    with quiet_values():
        value: Any = ds.get(keyword)
    if isinstance(value, MultiValue):  # e.g. a backslash inside a name: shown as written
        value = "\\".join(str(v) for v in value)
    t = "" if value is None else clean_text(str(value)).strip()  # no NUL or other control character reaches a report
    return t if t else UNKNOWN


def _fmt_date(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if re.fullmatch(r"\d{8}", da) else da


def header_from_dataset(ds: Dataset) -> PatientHeader:
    """The header fields of a source DICOM data set (``unknown`` where a value is empty or absent)."""
    return PatientHeader(
        patient_name=_text(ds, "PatientName").replace("^", " ").strip() or UNKNOWN,
        patient_id=_text(ds, "PatientID"),
        birth_date=_fmt_date(_text(ds, "PatientBirthDate")),
        sex=_text(ds, "PatientSex"),
        study_date=_fmt_date(_text(ds, "StudyDate")),
        accession=_text(ds, "AccessionNumber"),
        description=_text(ds, "StudyDescription"),
        study_uid=_text(ds, "StudyInstanceUID"),
    )


def header_without_dicom(study_key: str, *, dicom_study: bool) -> PatientHeader:
    """The header of a study with no readable DICOM source (PNG/JPEG inputs, or unreadable files)."""
    na = "not available (no DICOM source)"
    return PatientHeader(patient_name=na, patient_id=na, birth_date=na, sex=na, study_date=na, accession=na,
                         description=na, study_uid=study_key if dicom_study else UNKNOWN)


def deidentify(header: PatientHeader, study_key: str, *, key: bytes | None = None) -> PatientHeader:
    """Replace name/ID/UID with stable pseudonyms; remove dates (birth and study), the accession number and the
    study description (free text a site may fill with names or numbers). Sex is kept.

    Raises:
        ConfigError: no usable pseudonym key (``pseudonym_key``) when ``key`` is not given.
    """
    key = key or pseudonym_key()
    known_id = header.patient_id not in (UNKNOWN, "") and "not available" not in header.patient_id
    ident = header.patient_id if known_id else study_key
    return PatientHeader(
        patient_name=pseudonym("patient:" + ident, key=key),
        patient_id=pseudonym("patient:" + ident, key=key),
        birth_date=REMOVED,
        sex=header.sex,
        study_date=REMOVED,
        accession=REMOVED,
        description=REMOVED,
        study_uid=pseudonym_uid(header.study_uid if header.study_uid != UNKNOWN else study_key, key=key),
        deidentified=True,
    )


def study_slug(key: str, *, deidentified: bool) -> str:
    """A filesystem-safe, stable folder/file name for a study (a pseudonym when de-identified).

    A UID-shaped key (``1.2.840...``, at most 64 characters) is used as it is; any other key (``..``, a folder
    path, a formula) gives its last path component made safe and a hash of the whole key, so a slug is never
    ``.``, ``..``, empty or holds a separator.
    """
    if deidentified:
        return pseudonym("study:" + key, prefix="study-")
    return identified_slug(key)
