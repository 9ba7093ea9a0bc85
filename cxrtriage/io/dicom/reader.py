"""Read one DICOM image into an Image2D: check the header, parse once, decode, transform, and record what was done."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID

from cxrtriage.errors import InputError
from cxrtriage.io.dicom.checks import check_codestream, check_pixel_module, frame_fragments
from cxrtriage.io.dicom.decode import decode
from cxrtriage.io.dicom.deflate import DEFLATED
from cxrtriage.io.dicom.header import DicomHeader, header_from_dataset, read_header
from cxrtriage.io.dicom.messages import first_line, warning_notes
from cxrtriage.io.dicom.spacing import pixel_spacing
from cxrtriage.io.dicom.transforms import modality_lut, stored_range, to_monochrome2, voi_window
from cxrtriage.io.dicom.values import get_int, transfer_syntax
from cxrtriage.io.limits import check_size
from cxrtriage.io.reduced import (
    ReducedDecodeError,
    ReducedPixels,
    area_scale,
    averaged_text,
    block_average,
    decode_j2k_reduced,
    decode_jpeg_reduced,
)
from cxrtriage.types import DicomInfo, Image2D, InputKind, SourceRef

log = logging.getLogger(__name__)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
PIXEL_DATA = 0x7FE00010
FULL_RESOLUTION = "none (full resolution)"
MaxScale = Callable[[tuple[int, int]], float]
"""Given the full (rows, columns), how many times smaller per side the consumers of the pixels accept them."""

# JPEG 2000 (lossless, lossy, HTJ2K) and the DCT JPEG processes libjpeg scales (baseline, extended 8-bit)
_J2K_REDUCIBLE = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                            "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})
_JPEG_REDUCIBLE = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})


@dataclass(frozen=True, slots=True)
class DicomReadFacts:
    """How the pixels of a DICOM file were turned into an Image2D (for `cxrtriage inspect`)."""

    transfer_syntax: str
    transfer_syntax_name: str
    decoder: str
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    stored_range: tuple[float, float]
    modality_lut: str  # "none (identity)", "RescaleSlope 1 / RescaleIntercept -1024", "Modality LUT Sequence (...)"
    inverted: bool
    voi: str
    spacing_source: str  # "PixelSpacing", "ImagerPixelSpacing" or "" when unknown
    notes: tuple[str, ...] = field(default_factory=tuple)
    reduction: str = FULL_RESOLUTION  # "1/8: 245x231 of 1841x1955", or why the full image was decoded


def read_dicom(path: str | Path, *, header: DicomHeader | None = None, dataset: Dataset | None = None,
               max_scale: MaxScale | None = None) -> Image2D:
    """Read one single-frame greyscale DICOM image into an Image2D (see `read_dicom_detailed`)."""
    return read_dicom_detailed(path, header=header, dataset=dataset, max_scale=max_scale)[0]


def read_dicom_detailed(path: str | Path, *, header: DicomHeader | None = None, dataset: Dataset | None = None,
                        max_scale: MaxScale | None = None) -> tuple[Image2D, DicomReadFacts]:
    """Read a DICOM image: decode, modality LUT, MONOCHROME1 → MONOCHROME2, VOI window, spacing.

    ``max_scale`` (given the full size, the largest reduction per side the caller accepts) lets JPEG 2000 and
    8-bit DCT JPEG pixel data be decoded at 1/2, 1/4... resolution (`cxrtriage.io.reduced`): the Image2D then
    has ``scale`` > 1 and ``full_shape`` the header's size. Any other syntax, or a reduced decode that fails, is
    decoded in full; ``DicomReadFacts.reduction`` says which.

    By default the file costs one header-only parse (`read_header`), after which the pixel data are read from where
    the header scan found them (`_with_pixels`); a deflated file, or one whose pixel data the scan could not place,
    is parsed again in full. ``header``, the `read_header` of ``path`` made earlier (e.g. by the probe), saves the
    header parse. ``dataset``, the data set
    already parsed in full from ``path`` (pixels included), saves both: the same checks, decoders, transforms
    and notes are applied to it, except the warnings pydicom gave while it was parsed. When its file meta has
    no TransferSyntaxUID, the one it was parsed with is set on it (the decoders need one).

    Raises:
        InputError: not an image, colour, multi-frame, truncated, undecodable or absurdly large;
            the message names the file, the tag and what to do.
        ValueError: both ``header`` and ``dataset`` are given.
    """
    if header is not None and dataset is not None:
        raise ValueError("read_dicom_detailed: give `header` or `dataset`, not both")
    p = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # malformed values are handled (and noted) where they are used
        if dataset is not None:
            header = header_from_dataset(dataset, p)
        elif header is None:
            header = read_header(p)
        bits_allocated = _check_image(header, p)
        notes = list(header.notes)
        if dataset is None:
            dataset = _with_pixels(header, p)
        if dataset is None:
            dataset, parse_notes = _parse_full(p)
            notes.extend(n for n in parse_notes if n not in notes)
        return _to_image(p, header, dataset, bits_allocated, notes, max_scale)


def _check_image(header: DicomHeader, p: Path) -> int:
    """Refuse what the header already shows cannot be read as a radiograph; returns BitsAllocated."""
    info, pixel = header.info, header.pixel
    if pixel.problem:
        raise InputError(f"{p}: {pixel.problem}; the file is damaged or incomplete, re-export or re-send it")
    if not pixel.present:
        name = UID(info.sop_class_uid).name if info.sop_class_uid else "unknown SOP class"
        raise InputError(f"{p}: no pixel data (7FE0,0010) in this DICOM object ({name}); it is not an image")
    rows, cols = info.rows, info.columns
    if rows <= 0 or cols <= 0:
        raise InputError(f"{p}: pixel data present but (0028,0010) Rows / (0028,0011) Columns are missing or zero; "
                         "the header is corrupt")
    pi = info.photometric_interpretation
    if info.samples_per_pixel != 1 or pi not in MONOCHROME:
        raise InputError(f"{p}: (0028,0004) PhotometricInterpretation '{pi or 'missing'}' with "
                         f"{info.samples_per_pixel} sample(s) per pixel is not supported; expected a greyscale "
                         "radiograph (MONOCHROME1/MONOCHROME2)")
    if info.number_of_frames > 1:
        raise InputError(f"{p}: multi-frame object ({info.number_of_frames} frames); a radiograph has a single frame")
    bits_allocated = check_pixel_module(header.dataset, p, pixel.keyword)
    check_size(p, rows, cols, frames=info.number_of_frames, samples=info.samples_per_pixel,
               bytes_per_sample=max((bits_allocated + 7) // 8, 1), reader="dicom", encoded_bytes=_file_size(p))
    return bits_allocated


def _file_size(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0


def _with_pixels(header: DicomHeader, p: Path) -> Dataset | None:
    """The header's data set with its pixel data element read straight from where the header scan found it, or None
    when that is not known to give what a full parse gives (then the file is parsed again, in full).

    Why: a second pydicom parse of the whole file (every element again, the pixels in many small reads) cost
    0.5-0.9 ms of the 3.4 ms the uncompressed RG1 chest took to read. Only elements after the pixel data are
    missing from the result (Data Set Trailing Padding, digital signatures): none of them bears on the pixels.
    The header's own data set is left as it is (it holds no pixels, and its callers may keep it).
    """
    ds, pixel = header.dataset, header.pixel
    ts = transfer_syntax(ds)
    if (pixel.keyword != "PixelData" or pixel.value_span is None or pixel.problem or not ts or ts == DEFLATED
            or header.assumed_transfer_syntax):
        return None
    offset, size = pixel.value_span
    try:
        with p.open("rb") as fh:
            fh.seek(offset)
            raw = fh.read(size)
    except OSError:
        return None
    if len(raw) != size:  # the file changed since the header was read: the full parse reports what it finds
        return None
    copy = Dataset(dict(ds.items()))  # a new element dict: adding the pixels must not change the header's data set
    copy.file_meta = ds.file_meta
    implicit, little = ds.original_encoding
    copy.set_original_encoding(implicit, little, ds.original_character_set)
    vr = "OW" if not pixel.encapsulated and get_int(ds, "BitsAllocated", 0) > 8 else "OB"
    copy.add(DataElement(PIXEL_DATA, vr, raw, is_undefined_length=pixel.encapsulated))
    return copy


def _parse_full(p: Path) -> tuple[Dataset, list[str]]:
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(p, force=True)
    except Exception as exc:
        raise InputError(f"{p}: DICOM data set cannot be read ({first_line(exc)})") from exc
    return ds, warning_notes(caught)


def _decoding_syntax(ds: Dataset, header: DicomHeader, p: Path) -> str:
    """The transfer syntax to decode with: the file meta's, else the encoding the data set was parsed with."""
    ts = transfer_syntax(ds)
    if ts:
        return ts
    if header.pixel.encapsulated:
        raise InputError(f"{p}: the pixel data is compressed (encapsulated) but the file meta has no "
                         "(0002,0010) TransferSyntaxUID, so the codec is unknown; re-export the file with its "
                         "file meta information")
    if not header.assumed_transfer_syntax:
        raise InputError(f"{p}: no (0002,0010) TransferSyntaxUID and the encoding cannot be inferred")
    ts = header.assumed_transfer_syntax
    if not hasattr(ds, "file_meta") or ds.file_meta is None:
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(ts)
    return ts


def _reduced(p: Path, ds: Dataset, ts: str, info: DicomInfo, bits_allocated: int,
             max_scale: MaxScale | None) -> tuple[ReducedPixels | None, str]:
    """The pixels at a reduced resolution when the syntax and the caller allow it, else None and why not."""
    if max_scale is None:
        return None, FULL_RESOLUTION
    if ts not in _J2K_REDUCIBLE and ts not in _JPEG_REDUCIBLE:
        return None, f"none: {UID(ts).name} has no reduced-resolution decoding (full resolution)"
    limit = max_scale((info.rows, info.columns))
    try:
        if ts in _J2K_REDUCIBLE:
            # the fragments as they lie in the data set: OpenJPEG reads them without a joined copy
            red = decode_j2k_reduced(frame_fragments(ds.PixelData), rows=info.rows, columns=info.columns,
                                     max_scale=limit)
            if red is not None and (red.samples.dtype.kind == "i") != (get_int(ds, "PixelRepresentation", 0) == 1):
                # the codestream's sign disagrees with PixelRepresentation: pydicom's full decode corrects that
                raise ReducedDecodeError("JPEG 2000 signedness differs from (0028,0103) PixelRepresentation")
        else:
            frame = next(generate_frames(ds.PixelData, number_of_frames=1))
            bits_stored = get_int(ds, "BitsStored", bits_allocated) or bits_allocated
            red = decode_jpeg_reduced(frame, rows=info.rows, columns=info.columns, components=info.samples_per_pixel,
                                      precision=8 if bits_stored <= 8 and bits_allocated == 8 else bits_stored,
                                      max_scale=limit, exif_orientation=False)
    except (ReducedDecodeError, ValueError, TypeError, StopIteration) as exc:
        log.debug("%s: reduced-resolution decoding not used (%s); decoding in full", p, exc)
        return None, f"none: reduced decoding failed ({' '.join(str(exc).split())[:160]}); full resolution"
    if red is None:
        return None, f"none: the consumers need the full resolution (at most 1/{limit:.2f})"
    h, w = red.samples.shape
    return red, f"1/{red.scale}: {w}x{h} decoded of {info.columns}x{info.rows}"


def _jpeg_in_full(p: Path, ds: Dataset, info: DicomInfo, bits_allocated: int) -> ReducedPixels | None:
    """An 8-bit greyscale DCT JPEG frame decoded in full by OpenCV (libjpeg-turbo), or None: pydicom's plugins
    decode it then (any other layout, or any failure here).

    Why: pydicom asks GDCM first for these syntaxes, which took 38.6 ms for the RG1 chest where OpenCV takes ~8 ms,
    with identical samples. The reduced path already decodes these streams with OpenCV; libjpeg's damage messages are
    kept as notes (Pillow, the other fast decoder here, drops them). EXIF orientation is ignored, as DICOM decoders do.
    """
    bits_stored = get_int(ds, "BitsStored", bits_allocated) or bits_allocated
    if (info.samples_per_pixel != 1 or bits_allocated != 8 or bits_stored > 8
            or get_int(ds, "NumberOfFrames", 1) not in (0, 1)):
        return None
    try:
        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        return decode_jpeg_reduced(frame, rows=info.rows, columns=info.columns, components=1, precision=8,
                                   max_scale=1.0, exif_orientation=False, full_when_unreduced=True)
    except (ReducedDecodeError, ValueError, TypeError, StopIteration) as exc:
        log.debug("%s: OpenCV could not decode the JPEG in full (%s); pydicom's plugins decode it", p, exc)
        return None


def _block_averaged(arr: np.ndarray, ds: Dataset, max_scale: MaxScale, why_full: str) -> tuple[np.ndarray, int, str]:
    """A fully decoded frame reduced by block averaging (`cxrtriage.io.reduced.block_average`) as far as the
    caller allows: (pixels, scale, how). The stored values are averaged, before the modality LUT: the same as
    averaging the mapped values when the mapping is linear (rescale slope and intercept, MONOCHROME1), which is why
    a Modality LUT Sequence (a table: not linear) keeps the full resolution."""
    rows, cols = arr.shape
    scale = area_scale((rows, cols), max_scale)
    if scale == 1:
        return arr, 1, why_full
    if ds.get("ModalityLUTSequence"):
        return arr, 1, f"{why_full}; not averaged: a Modality LUT Sequence is not linear"
    out = block_average(arr, scale)
    codec = why_full.removeprefix("none: ").removesuffix(" (full resolution)").removesuffix("; full resolution")
    return out, scale, averaged_text(scale, out.shape, (rows, cols), f"({codec})")


def _to_image(p: Path, header: DicomHeader, ds: Dataset, bits_allocated: int,
              notes: list[str], max_scale: MaxScale | None = None) -> tuple[Image2D, DicomReadFacts]:
    info = header.info
    ts = _decoding_syntax(ds, header, p)
    check_codestream(ds, ts, p, rows=info.rows, columns=info.columns, samples=info.samples_per_pixel,
                     bits_allocated=bits_allocated)
    red, reduction = _reduced(p, ds, ts, info, bits_allocated, max_scale)
    full_jpeg = _jpeg_in_full(p, ds, info, bits_allocated) if red is None and ts in _JPEG_REDUCIBLE else None
    if red is not None:
        arr, decoder, scale = red.samples, red.decoder, red.scale
        notes.extend(red.notes)
    elif full_jpeg is not None:
        arr, decoder, scale = full_jpeg.samples, full_jpeg.decoder, 1
        notes.extend(full_jpeg.notes)
    else:
        arr, decoder, decode_notes = decode(ds, p, ts)
        notes.extend(decode_notes)
        scale = 1
        arr = np.asarray(arr)
        if arr.ndim == 3 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 2 or arr.shape != (info.rows, info.columns):
            raise InputError(f"{p}: decoded pixel array has shape {arr.shape}, expected ({info.rows}, {info.columns}); "
                             "the header does not match the pixel data")

    bits_stored = get_int(ds, "BitsStored", bits_allocated) or bits_allocated
    pixel_rep = get_int(ds, "PixelRepresentation", 0)
    stored, range_notes = stored_range(arr, header.pixel.keyword, bits_stored, pixel_rep)
    notes.extend(range_notes)
    if red is None and max_scale is not None:
        arr, scale, reduction = _block_averaged(arr, ds, max_scale, reduction)
    values, (lo, hi), lut_desc, lut_notes = modality_lut(arr, ds, stored, p)
    notes.extend(lut_notes)
    values, mirror, invert_notes = to_monochrome2(values, ds, info.photometric_interpretation, (lo, hi))
    notes.extend(invert_notes)
    voi, voi_desc, voi_notes = voi_window(ds, mirror=mirror)
    notes.extend(voi_notes)
    spacing, spacing_source, spacing_notes = pixel_spacing(ds)
    notes.extend(spacing_notes)
    if header.presentation_intent == "FOR PROCESSING":
        notes.append("PresentationIntentType FOR PROCESSING: raw detector data, not meant for display")

    pixels = np.ascontiguousarray(values, dtype=np.float32)
    if red is not None:
        # after the LUTs, as a full decode followed by an area resize averages the mapped values
        pixels = red.area_average(pixels, (float(lo), float(hi)))
    image = Image2D(
        pixels=pixels,
        value_range=(float(lo), float(hi)),
        source=SourceRef(path=str(p), kind=InputKind.DICOM),
        pixel_spacing_mm=spacing,
        voi=voi,
        dicom=info if info.transfer_syntax_uid else _with_ts(info, ts),
        notes=tuple(notes),
        full_shape=(info.rows, info.columns) if scale > 1 else None,
        scale=scale,
    )
    facts = DicomReadFacts(
        transfer_syntax=ts, transfer_syntax_name=UID(ts).name, decoder=decoder, bits_allocated=bits_allocated,
        bits_stored=bits_stored, pixel_representation=pixel_rep, stored_range=stored, modality_lut=lut_desc,
        inverted=mirror is not None, voi=voi_desc, spacing_source=spacing_source, notes=tuple(notes),
        reduction=reduction,
    )
    return image, facts


def _with_ts(info: DicomInfo, ts: str) -> DicomInfo:
    return replace(info, transfer_syntax_uid=ts)
