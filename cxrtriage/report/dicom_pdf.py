"""Encapsulated PDF Storage of the study report, in the source study (Modality configurable, DOC by default)."""

from __future__ import annotations

import datetime as dt

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from cxrtriage.report import dicom_common as common
from cxrtriage.report.dicom_common import AlgorithmInfo

ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


def build_encapsulated_pdf(
    sources: list[Dataset], pdf: bytes, algo: AlgorithmInfo, *, modality: str = "DOC",
    title: str = "AI decision-support report (not for diagnosis)",
) -> Dataset:
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
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(ENCAPSULATED_PDF_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    common.copy_patient_study(src, ds)
    if "SpecificCharacterSet" not in ds:
        ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8 for the title and descriptions
    now = dt.datetime.now()
    # SOP Common
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Encapsulated Document Series
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = common.SERIES_NUMBERS["pdf"]
    ds.SeriesDescription = common.series_description("pdf")
    # General Equipment and SC Equipment
    ds.Manufacturer = common.MANUFACTURER
    ds.ManufacturerModelName = algo.name[:64]
    ds.SoftwareVersions = algo.versions
    ds.ConversionType = "WSD"  # workstation
    # Encapsulated Document
    ds.InstanceNumber = 1
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
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
