"""What every DICOM result shares: the source dataset, stable UIDs, IHE AIR contributing equipment, codes.

The patient and study modules are highdicom's to copy (``SOPClass.copy_patient_and_study_information``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VM
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from cxrtriage import __version__
from cxrtriage.errors import InputError
from cxrtriage.files import atomic_write
from cxrtriage.io.dicom import check_inflation
from cxrtriage.report.header import quiet_values

MANUFACTURER = "cxrtriage"
PRIVATE_SCHEME = "99CXRTRIAGE"
IHE_SCHEME = "99IHE"
# IHE AI Results (AIR) Rev 1.1: Purpose of Reference for the algorithm in the Contributing Equipment Sequence.
PURPOSE_PROCESSING_ALGORITHM = hd.sr.CodedConcept("Newcode1", IHE_SCHEME, "Processing Algorithm")
NOT_FOR_DIAGNOSIS = "decision support, not for diagnosis"

# Series numbers of the result series (one series per object type, as each type has its own Modality).
SERIES_NUMBERS = {"sr": 9901, "sc": 9902, "seg": 9903, "pdf": 9904}

# Finding codes: terminology facts (not model facts). A manifest may override them with an
# ``label_codes`` entry: {"label": {"value": ..., "scheme": ..., "meaning": ...}}.
_SCT = "SCT"
FINDING_CODES: dict[str, tuple[str, str, str]] = {
    "pneumothorax": ("36118008", _SCT, "Pneumothorax"),
    "effusion": ("60046008", _SCT, "Pleural effusion"),
    "pleural_effusion": ("60046008", _SCT, "Pleural effusion"),
    "cardiomegaly": ("287272002", _SCT, "Cardiomegaly"),
    "edema": ("19242006", _SCT, "Pulmonary edema"),
    "pulmonary_edema": ("19242006", _SCT, "Pulmonary edema"),
    "fibrosis": ("112674009", _SCT, "Fibrosis"),
    "nodule": ("27925004", _SCT, "Nodule"),
    "mass": ("4147007", _SCT, "Mass"),
    "infiltration": ("112121", "DCM", "Infiltrate"),
    "infiltrate": ("112121", "DCM", "Infiltrate"),
    "lung_opacity": ("112033", "DCM", "Abnormal opacity"),
    "opacity": ("112033", "DCM", "Abnormal opacity"),
    "pneumomediastinum": ("16838000", _SCT, "Pneumomediastinum"),
    "abnormal": ("408574004", _SCT, "Imaging result abnormal"),
    "atelectasis": ("46621007", _SCT, "Atelectasis"),
    "pneumonia": ("233604007", _SCT, "Pneumonia"),
    "consolidation": ("95436008", _SCT, "Lung consolidation"),
    "emphysema": ("87433001", _SCT, "Pulmonary emphysema"),
}
# Lung segmentation labels → anatomy codes.
ANATOMY_CODES: dict[str, tuple[str, str, str]] = {
    "lung": ("39607008", _SCT, "Lung"),
    "lungs": ("39607008", _SCT, "Lung"),
    "right_lung": ("3341006", _SCT, "Right lung"),
    "left_lung": ("44029006", _SCT, "Left lung"),
}


@dataclass(frozen=True, slots=True)
class AlgorithmInfo:
    """The algorithm that produced a result (the classifier, or the segmenter for SEG/areas)."""

    name: str
    version: str
    sha256: str = ""
    parameters: dict[str, str] = field(default_factory=dict)
    label_codes: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def versions(self) -> list[str]:
        return [f"{self.name} {self.version}"[:64], f"cxrtriage {__version__}"]


def _norm(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def finding_code(label: str, algo: AlgorithmInfo | None = None) -> hd.sr.CodedConcept:
    """SCT/DCM code of a finding label, else a private ``99CXRTRIAGE`` code (value ≤ 16 chars)."""
    if algo and label in algo.label_codes:
        c = algo.label_codes[label]
        return hd.sr.CodedConcept(str(c["value"]), str(c["scheme"]), str(c["meaning"]))
    hit = FINDING_CODES.get(_norm(label))
    if hit:
        return hd.sr.CodedConcept(*hit)
    return private_code(label)


def anatomy_code(label: str) -> hd.sr.CodedConcept:
    hit = ANATOMY_CODES.get(_norm(label))
    return hd.sr.CodedConcept(*hit) if hit else private_code(label)


def private_code(label: str) -> hd.sr.CodedConcept:
    value = re.sub(r"[^A-Z0-9]+", "-", label.upper()).strip("-")
    if len(value) > 16:  # SH: keep it unique with a short hash
        value = value[:11] + "-" + _short(label)
    return hd.sr.CodedConcept(value or "UNNAMED", PRIVATE_SCHEME, label[:64])


def _short(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:4].upper()


def coding_schemes() -> list[hd.coding_schemes.CodingSchemeIdentificationItem]:
    """Declare the private coding schemes used in the objects (PS3.3 C.12.1.1.8)."""
    return [
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=PRIVATE_SCHEME, name="cxrtriage private codes", responsible_organization="cxrtriage project"),
        hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=IHE_SCHEME, name="IHE Radiology codes", responsible_organization="IHE"),
    ]


def contributing_equipment(algo: AlgorithmInfo) -> Dataset:
    """The IHE AIR Contributing Equipment item naming the algorithm, its version and cxrtriage.

    Hand-written: ``hd.ContributingEquipment`` rejects any purpose but its seven DCM codes
    (highdicom/base_content.py:87-101), and IHE AIR uses (Newcode1, 99IHE, "Processing Algorithm").
    """
    item = Dataset()
    item.Manufacturer = MANUFACTURER
    code = Dataset()
    code.CodeValue = PURPOSE_PROCESSING_ALGORITHM.value
    code.CodingSchemeDesignator = PURPOSE_PROCESSING_ALGORITHM.scheme_designator
    code.CodeMeaning = PURPOSE_PROCESSING_ALGORITHM.meaning
    item.PurposeOfReferenceCodeSequence = [code]
    item.ManufacturerModelName = algo.name[:64]
    item.SoftwareVersions = algo.versions
    item.ContributionDateTime = dt.datetime.now().strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = f"AI result by {algo.name} {algo.version} ({NOT_FOR_DIAGNOSIS})"[:64]
    return item


def set_contributing_equipment(ds: Dataset, algo: AlgorithmInfo) -> None:
    """Append the algorithm after any items highdicom wrote (the source's acquisition equipment, highdicom)."""
    items = list(ds.get("ContributingEquipmentSequence", []))
    items.append(contributing_equipment(algo))
    ds.ContributingEquipmentSequence = items


def series_description(kind: str) -> str:
    """SeriesDescription (LO, ≤ 64 chars) saying what the series is and that it is not for diagnosis."""
    what = {"sr": "AI findings SR", "sc": "AI overlay SC", "seg": "AI lung SEG", "pdf": "AI report PDF"}[kind]
    return f"{what} - {NOT_FOR_DIAGNOSIS}"[:64]


def stable_uid(*parts: str) -> str:
    """A UID derived from ``parts``: writing the same result twice gives the same UID (no PACS duplicates)."""
    return generate_uid(entropy_srcs=["cxrtriage", __version__, *parts])


def result_uids(kind: str, source: Dataset, algo: AlgorithmInfo) -> tuple[str, str]:
    """(SeriesInstanceUID, SOPInstanceUID) for a result of ``kind`` about ``source``.

    The series depends on the study, the kind and the algorithm; the instance also on the source image
    and the algorithm parameters (so new thresholds give a new instance, never a silent overwrite).
    """
    params = json.dumps(algo.parameters, sort_keys=True)
    series = stable_uid("series", kind, str(source.StudyInstanceUID), algo.name, algo.version, algo.sha256)
    instance = stable_uid("instance", kind, str(source.SOPInstanceUID), algo.name, algo.version, algo.sha256, params)
    return series, instance


# The Type 2 patient/study attributes highdicom's SR and SEG read from the source as attributes
# (highdicom/sr/sop.py:182-189, seg/sop.py:522-529): an AttributeError when absent.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "StudyID", "AccessionNumber")


def read_dataset(path: Path) -> Dataset:
    """The whole source DICOM data set, pixels included (SEG and SC need the geometry and the image)."""
    check_inflation(path)  # a deflated file inflates in one piece in pydicom: only when bounded
    try:
        return pydicom.dcmread(path, force=True)  # as cxrtriage.io reads it: by content, preamble or not
    except Exception as exc:
        raise InputError(f"{path}: source DICOM cannot be read ({describe_error(exc)})") from exc


# A UID the results can reference: digits in dot-separated components, at most 64 characters. (PS3.5 9.1 also
# bars leading zeros, which real sources have now and then; a PACS files them without complaint.)
_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_REFERENCED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# Control characters no DICOM text value may hold (ESC is kept: ISO 2022 character-set escapes; so are the
# TAB/LF/FF/CR that LT/ST/UT allow).
_BAD_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI",
                       "UR", "UT"})
# Besides the patient and study modules, the image-level attributes the SC copies from the source.
_COPIED_IMAGE_ATTRIBUTES = ("BodyPartExamined", "ImageLaterality", "Laterality")
_FALLBACK_PATIENT_STUDY = (*TYPE2_PATIENT_STUDY, "ReferringPhysicianName", "StudyDescription", "PatientAge",
                           "PatientSize", "PatientWeight", "OtherPatientNames", "PatientBirthTime", "PatientComments")


@lru_cache(maxsize=1)
def copied_keywords() -> frozenset[str]:
    """Keywords of the source attributes the DICOM results copy: the root attributes of the Patient, Clinical Trial
    Subject, General Study, Patient Study and Clinical Trial Study modules (exactly the set highdicom's
    ``copy_patient_and_study_information`` copies; its module tables are not public API, hence the fallback)
    and the image-level attributes the SC copies."""
    try:
        from highdicom._standard_utils import get_module_attribute_map

        modules = get_module_attribute_map()
        names = {str(item["keyword"]) for key in ("patient", "clinical-trial-subject", "general-study", "patient-study",
                                                  "clinical-trial-study")
                 for item in modules[key] if len(item["path"]) == 0}
    except Exception:  # another highdicom: the attributes it is known to read, and the usual free text
        names = set(_FALLBACK_PATIENT_STUDY)
    return frozenset(names | set(_COPIED_IMAGE_ATTRIBUTES) | set(TYPE2_PATIENT_STUDY))


def _invalid_value(keyword: str, vr: str, value: object) -> bool:
    """True when ``value`` is not a valid ``vr`` value for ``keyword`` (VM, format, length, control characters)."""
    values = list(value) if isinstance(value, pydicom.multival.MultiValue) else [value]
    if len(values) > 1 and dictionary_VM(keyword) == "1":  # e.g. a backslash inside a PatientName
        return True
    for v in values:
        if v is None or v == "":
            continue
        text = str(v)
        if _BAD_CONTROL.search(text):
            return True
        try:
            validate_value(vr, text, pydicom_config.RAISE)
        except (ValueError, TypeError):
            return True
    return False


def drop_invalid_values(ds: Dataset) -> tuple[str, ...]:
    """Blank (Type 2) or remove (otherwise) every invalid value among the attributes the results copy.

    A malformed value in the source (a birth date ``1945-06-07``, a backslash in a person name) would make
    highdicom refuse the whole object, or end up in it; leaving it out keeps the result valid and complete
    otherwise. Changes ``ds`` in memory only. Returns ``"Keyword (VR)"`` of each value left out, never the value.
    """
    dropped: list[str] = []
    keep_empty = set(TYPE2_PATIENT_STUDY)
    with quiet_values():
        for keyword in sorted(copied_keywords()):
            if keyword not in ds or keyword in _REFERENCED_UIDS:
                continue
            elem = ds[keyword]
            if elem.VR not in _TEXT_VRS or elem.is_empty:
                continue
            if _invalid_value(keyword, str(elem.VR), elem.value):
                dropped.append(f"{keyword} ({elem.VR})")
                if keyword in keep_empty:
                    ds[keyword].value = ""
                else:
                    del ds[keyword]
    return tuple(dropped)


def check_source(ds: Dataset, path: Path) -> Dataset:
    """``ds`` made ready to be referenced by results: its UIDs checked, absent Type 2 attributes set empty.

    Raises:
        InputError: a UID the results must reference is absent or not a UID (e.g. ``..``); the message names the
            attribute, never its value.
    """
    with quiet_values():
        for kw in _REFERENCED_UIDS:
            uid = str(ds.get(kw, "") or "")
            if not uid:
                raise InputError(f"{path}: source DICOM has no {kw}; DICOM results cannot reference it")
            if len(uid) > 64 or not _UID.fullmatch(uid):
                raise InputError(f"{path}: the source's {kw} is not a valid UID (digits and dots, at most 64 "
                                 "characters); DICOM results cannot reference it")
    for kw in TYPE2_PATIENT_STUDY:  # absent Type 2 = "known to be unknown": empty (in memory only) for highdicom
        if kw not in ds:
            setattr(ds, kw, "")
    return ds


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of an error raised while building a result, with quoted text (a source value, a UID) left
    out: the message is shown on the terminal and in the report index."""
    return f"{type(exc).__name__}: {_QUOTED.sub('(value not shown)', str(exc))}"


def read_source(path: Path) -> Dataset:
    """The source DICOM data set, checked by ``check_source``."""
    return check_source(read_dataset(path), path)


def creation_stamp() -> tuple[str, str]:
    """(date, time) of now, to the second: the Content/Series Date and Time of a result."""
    now = dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def save(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (with file meta), atomically."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return atomic_write(path, buf.getvalue())
