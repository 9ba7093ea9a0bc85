"""Regenerate sample_data/ from openly licensed files shipped on PyPI (pydicom-data, pydicom). Deterministic.

Sources (installed with `pip install pydicom pydicom-data`, both MIT):
- RG1_UNCR.dcm from pydicom-data: the NEMA WG04 RG1 posteroanterior chest CR, 1955x1841, 15-bit MONOCHROME1.
The Basic Text SR (not an image: must be excluded) is written from scratch here, in the RG1 study.

Run from the repository root:  python sample_data/make_sample_data.py
"""

from __future__ import annotations

import copy
from pathlib import Path

import cv2
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless, generate_uid

OUT = Path(__file__).resolve().parent
ROOT_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, as used by generate_uid()
MAX_FILE_BYTES = 5 * 1024 * 1024


def _source(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        raise SystemExit(f"{name} not found: install the test data with `pip install pydicom-data`")
    return Path(str(path))


def _uid(*parts: str) -> str:
    """A deterministic UID, so that regenerating gives byte-identical files."""
    return generate_uid(prefix=ROOT_PREFIX, entropy_srcs=["cxrtriage sample_data", *parts])


def _downscale(arr: np.ndarray, factor: int) -> np.ndarray:
    """Mean of factor x factor blocks, rounded: keeps the 15-bit range and the image's look."""
    rows, cols = (arr.shape[0] // factor) * factor, (arr.shape[1] // factor) * factor
    blocks = arr[:rows, :cols].astype(np.uint32).reshape(rows // factor, factor, cols // factor, factor)
    total = blocks.sum(axis=(1, 3))
    return ((total + (factor * factor) // 2) // (factor * factor)).astype(np.uint16)


def _derived(src: Dataset, name: str, description: str, *, pixels: np.ndarray | None = None,
             new_series: bool = True) -> Dataset:
    """A copy of ``src`` as a new instance (new SOP/Series UIDs) carrying a note of what was done."""
    ds = copy.deepcopy(src)
    sop = _uid(name, "sop")
    ds.SOPInstanceUID = sop
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    if new_series:
        ds.SeriesInstanceUID = _uid(name, "series")
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = description[:1024]
    ds.ImageComments = f"cxrtriage sample_data: {description}"[:10240]
    ds.SourceImageSequence = [Dataset()]
    ds.SourceImageSequence[0].ReferencedSOPClassUID = src.SOPClassUID
    ds.SourceImageSequence[0].ReferencedSOPInstanceUID = src.SOPInstanceUID
    if pixels is not None:
        ds.set_pixel_data(pixels, "MONOCHROME1", int(src.BitsStored), generate_instance_uid=False)
    return ds


def _save(ds: Dataset, name: str) -> Path:
    path = OUT / name
    ds.save_as(path, enforce_file_format=True)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise SystemExit(f"{path} is {size / 2**20:.1f} MiB, over the 5 MiB limit for committed samples")
    print(f"{name}: {size / 2**20:.2f} MiB")
    return path


BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _text_sr(src: Dataset) -> Dataset:
    """A minimal Basic Text SR in the source's study: a non-image object that cxrtriage must exclude."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    sop = _uid("text-sr", "sop")
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        setattr(ds, kw, getattr(src, kw, ""))
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, sop
    ds.SeriesInstanceUID = _uid("text-sr", "series")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.Manufacturer = "cxrtriage sample_data generator"
    ds.ContentDate, ds.ContentTime = ds.StudyDate, ds.StudyTime
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
    ds.CompletionFlag, ds.VerificationFlag = "PARTIAL", "UNVERIFIED"
    ds.ReferencedPerformedProcedureStepSequence = []  # Type 2: present, empty
    ds.PerformedProcedureCodeSequence = []
    text = Dataset()
    text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
    text.ConceptNameCodeSequence = [_code("121071", "DCM", "Finding")]
    text.TextValue = ("Test object written by cxrtriage's sample_data generator; not a clinical report. "
                      "It has no pixel data, so cxrtriage must exclude it.")
    ds.ContentSequence = [text]
    return ds


def main() -> None:
    src = pydicom.dcmread(_source("RG1_UNCR.dcm"))
    full = src.pixel_array.astype(np.uint16)

    # 1. Full resolution, JPEG 2000 lossless: the same SOP instance, only the transfer syntax changes.
    j2k = copy.deepcopy(src)
    j2k.ImageComments = "cxrtriage sample_data: RG1_UNCR transcoded losslessly to JPEG 2000"
    j2k.compress(JPEG2000Lossless, full, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    _save(j2k, "cxr_pa_rg1_j2k_lossless.dcm")

    # 2. Half resolution (2x2 block mean), RLE lossless; 3. the same pixels uncompressed, explicit VR LE.
    half = _downscale(full, 2)
    what = "RG1 PA chest downscaled 2x (2x2 block mean) from pydicom-data RG1_UNCR.dcm"
    rle = _derived(src, "half-rle", what + ", RLE lossless", pixels=half)
    rle.compress(RLELossless, encoding_plugin="pylibjpeg", generate_instance_uid=False)
    _save(rle, "cxr_pa_rg1_half_rle.dcm")
    _save(_derived(src, "half-explicit", what + ", uncompressed", pixels=half), "cxr_pa_rg1_half_explicit.dcm")

    # 4. Must be EXCLUDED: the same PA image re-tagged as a lateral (ViewPosition LL), quarter size.
    lateral = _derived(src, "lateral", "RG1 PA chest downscaled 4x and RE-TAGGED ViewPosition LL to test "
                       "lateral exclusion; the pixels are NOT a lateral view", pixels=_downscale(full, 4))
    lateral.ViewPosition = "LL"
    lateral.SeriesDescription = "TEST: PA image re-tagged as lateral"
    _save(lateral, "cxr_retagged_lateral_rg1_quarter.dcm")

    # 5. Must be EXCLUDED: a structured report (no pixels), written here in the same study.
    _save(_text_sr(src), "report_basic_text_sr.dcm")

    # 6. A PNG (8-bit, displayed with the file's own window, MONOCHROME1 inverted) at quarter size: the raster path.
    quarter = _downscale(full, 4).astype(np.float64)
    center, width = float(src.WindowCenter), float(src.WindowWidth)
    shown = 1.0 - np.clip((quarter - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)  # PS3.3 C.11.2.1.2.1
    png = OUT / "cxr_pa_rg1_quarter.png"
    cv2.imwrite(str(png), np.rint(shown * 255).astype(np.uint8), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"{png.name}: {png.stat().st_size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
