"""Encapsulated PDF Storage of the study report, in the source study (Modality configurable, DOC by default)."""

from __future__ import annotations

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from cxrtriage.report import dicom_common as common
from cxrtriage.report.dicom_common import AlgorithmInfo

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


def build_encapsulated_pdf(
    sources: list[Dataset], pdf: bytes, algo: AlgorithmInfo, *, modality: str = "DOC",
    title: str = "AI decision-support report (not for diagnosis)",
) -> hd.SOPClass:
    """Wrap ``pdf`` in an Encapsulated PDF instance; patient/study come from ``sources[0]``.

    Every source image is listed in the Source Instance Sequence.
    """
    if not sources:
        raise ValueError("an encapsulated PDF needs at least one source DICOM image")
    if not pdf.startswith(b"%PDF"):
        raise ValueError("the report bytes are not a PDF")
    modality = modality.strip().upper()
    if not modality or len(modality) > 16:
        raise ValueError(f"modality '{modality}' is not a valid CS value (1-16 characters, e.g. DOC or OT)")
    src = sources[0]
    series_uid, sop_uid = common.result_uids("pdf", src, algo)
    date, time = common.creation_stamp()
    # highdicom has no Encapsulated PDF class: its base SOPClass writes the file meta, SOP Common, General Series
    # and General Equipment attributes; the Encapsulated Document module below is hand-written.
    ds = hd.SOPClass(
        study_instance_uid=src.StudyInstanceUID,
        series_instance_uid=series_uid,
        series_number=common.SERIES_NUMBERS["pdf"],
        sop_instance_uid=sop_uid,
        sop_class_uid=ENCAPSULATED_PDF_STORAGE,
        instance_number=1,
        modality=modality,
        manufacturer=common.MANUFACTURER,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=common.series_description("pdf"),
        manufacturer_model_name=algo.name[:64],
        software_versions=algo.versions,  # type: ignore[arg-type]  # LO, multi-valued
        content_date=date,
        content_time=time,
        specific_character_set=src.get("SpecificCharacterSet") or "ISO_IR 192",  # UTF-8 for the title when unset
    )
    # Patient and study modules verbatim from the source (no re-validation of its values, unlike the constructor).
    ds.copy_patient_and_study_information(src)
    ds.ConversionType = "WSD"  # SC Equipment: workstation
    # Encapsulated Document
    ds.AcquisitionDateTime = date + time
    ds.BurnedInAnnotation = "YES"  # the PDF shows patient identification
    ds.DocumentTitle = title[:64]
    code = Dataset()
    code.CodeValue = "18748-4"
    code.CodingSchemeDesignator = "LN"
    code.CodeMeaning = "Diagnostic imaging study"
    ds.ConceptNameCodeSequence = [code]
    refs = []
    for s in sources:
        ref = Dataset()
        ref.ReferencedSOPClassUID = s.SOPClassUID
        ref.ReferencedSOPInstanceUID = s.SOPInstanceUID
        refs.append(ref)
    ds.SourceInstanceSequence = refs
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(pdf)
    common.set_contributing_equipment(ds, algo)
    return ds
