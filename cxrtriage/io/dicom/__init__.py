"""DICOM input: header and pixel data framing, decoding with fallbacks, grey-level transforms, spacing, one reader."""

from __future__ import annotations

from cxrtriage.io.dicom.header import (
    DicomHeader,
    PixelDataStatus,
    check_inflation,
    dicom_info,
    header_from_dataset,
    read_header,
)
from cxrtriage.io.dicom.reader import MONOCHROME, DicomReadFacts, read_dicom, read_dicom_detailed
from cxrtriage.io.dicom.spacing import pixel_spacing
from cxrtriage.io.dicom.transforms import voi_window
from cxrtriage.io.dicom.values import get_int, get_numbers, get_raw_text, get_text

__all__ = [
    "MONOCHROME",
    "DicomHeader",
    "DicomReadFacts",
    "PixelDataStatus",
    "check_inflation",
    "dicom_info",
    "get_int",
    "get_numbers",
    "get_raw_text",
    "get_text",
    "header_from_dataset",
    "pixel_spacing",
    "read_dicom",
    "read_dicom_detailed",
    "read_header",
    "voi_window",
]
