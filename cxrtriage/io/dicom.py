"""Read DICOM headers and pixels: decode, modality LUT, MONOCHROME1, VOI window and pixel spacing, tolerant of broken files."""

from __future__ import annotations

import logging
import math
import os
import struct
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxrtriage.errors import InputError
from cxrtriage.io.limits import check_size, size_problem
from cxrtriage.types import DicomInfo, Image2D, InputKind, SourceRef, VoiWindow

log = logging.getLogger(__name__)

MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_DEFLATED = "1.2.840.10008.1.2.1.99"
_J2K_SYNTAXES = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                           "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203"})


@dataclass(frozen=True, slots=True)
class PixelDataStatus:
    """What the header scan found about the pixel data element, without reading it."""

    present: bool = False
    keyword: str = ""
    encapsulated: bool = False
    length: int | None = None  # value length for native data; total fragment bytes when encapsulated
    fragments: int | None = None
    problem: str | None = None  # truncated / malformed: the file cannot be decoded


@dataclass(frozen=True, slots=True)
class DicomHeader:
    """A data set read up to (not including) its pixel data, with facts about the rest of the file."""

    path: Path
    dataset: Dataset
    info: DicomInfo
    pixel: PixelDataStatus
    has_preamble: bool
    assumed_transfer_syntax: str | None = None  # set when the file meta carries none
    presentation_intent: str = ""
    notes: tuple[str, ...] = ()


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
    modality_lut: str  # "none", "RescaleSlope/Intercept 1 / -1024", "Modality LUT Sequence (...)"
    inverted: bool
    voi: str
    spacing_source: str  # "PixelSpacing", "ImagerPixelSpacing" or "" when unknown
    notes: tuple[str, ...] = field(default_factory=tuple)


# ----------------------------------------------------------------------------- header


def read_header(path: str | Path) -> DicomHeader:
    """Read a DICOM header (``stop_before_pixels``) and check the pixel data element's framing.

    Raises:
        InputError: the file is not a parseable DICOM data set.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on invalid values as they are converted; they are noted where they matter
        return _read_header(Path(path))


def _read_header(p: Path) -> DicomHeader:
    file_size = p.stat().st_size
    notes: list[str] = []
    with p.open("rb") as fh:
        preamble = fh.read(132)
        has_preamble = len(preamble) == 132 and preamble[128:132] == b"DICM"
        fh.seek(0)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
        except Exception as exc:  # pydicom raises many types on garbage
            raise InputError(f"{p}: not a readable DICOM file ({type(exc).__name__}: {_first_line(exc)}); "
                             "check that the file was transferred completely") from exc
        notes.extend(_warning_notes(caught))
        stop_pos = fh.tell()
        ts = _transfer_syntax(ds)
        if ts == _DEFLATED:
            pixel = _deflated_pixel_status(p)
        else:
            pixel = _scan_pixel_data(fh, ds, file_size)
            if not pixel.present and stop_pos >= file_size:
                pixel = _ended_early(ds) or pixel
    if len(ds) == 0 and not _has_meta(ds):
        raise InputError(f"{p}: no DICOM elements could be parsed; the file is not DICOM or is corrupt")
    assumed = None
    if not ts:
        assumed = _encoding_syntax(ds)
        if assumed:
            notes.append(f"file meta has no TransferSyntaxUID: assumed {UID(assumed).name} "
                         "(the encoding the data set was parsed with)")
    if not has_preamble:
        notes.append("no 128-byte preamble / 'DICM' marker: read as a bare data set")
    info = dicom_info(ds, p)
    intent = _text(ds, "PresentationIntentType").upper()
    if not info.sop_class_uid and not info.modality and "Rows" not in ds:
        if pixel.problem is None and not pixel.present and len(ds) < 3:
            raise InputError(f"{p}: parsed as DICOM but holds no usable elements; the file is corrupt or not DICOM")
    return DicomHeader(path=p, dataset=ds, info=info, pixel=pixel, has_preamble=has_preamble,
                       assumed_transfer_syntax=assumed, presentation_intent=intent,
                       notes=tuple(notes))


def dicom_info(ds: Dataset, path: Path | None = None) -> DicomInfo:
    """Technical header facts (no patient identifiers)."""
    meta = getattr(ds, "file_meta", None)
    sop_class = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    sop_inst = _text(ds, "SOPInstanceUID") or (_text(meta, "MediaStorageSOPInstanceUID") if meta is not None else "")
    return DicomInfo(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_inst,
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        modality=_text(ds, "Modality").upper(),
        body_part_examined=_text(ds, "BodyPartExamined"),
        view_position=_text(ds, "ViewPosition"),
        photometric_interpretation=_text(ds, "PhotometricInterpretation").upper(),
        transfer_syntax_uid=_transfer_syntax(ds),
        bits_stored=_int(ds, "BitsStored", 0),
        rows=_int(ds, "Rows", 0),
        columns=_int(ds, "Columns", 0),
        number_of_frames=max(_int(ds, "NumberOfFrames", 1), 1),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        image_laterality=_text(ds, "ImageLaterality") or _text(ds, "Laterality"),
        series_description=_text(ds, "SeriesDescription"),
    )


def _scan_pixel_data(fh: Any, ds: Dataset, file_size: int) -> PixelDataStatus:
    """Look at the element pydicom stopped before: present? complete? (no pixel bytes are read)."""
    pos = fh.tell()
    head = fh.read(12)
    if len(head) < 8:
        return PixelDataStatus()
    implicit, little = ds.original_encoding
    endian = "<" if little is not False else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in _PIXEL_TAGS:
        return PixelDataStatus()
    keyword = _PIXEL_TAGS[tag]
    if implicit:
        (length,) = struct.unpack(endian + "I", head[4:8])
        value_pos = pos + 8
    elif head[4:6] in _LONG_LENGTH_VRS:
        if len(head) < 12:
            return PixelDataStatus(True, keyword, problem="pixel data element header is cut short (file truncated)")
        (length,) = struct.unpack(endian + "I", head[8:12])
        value_pos = pos + 12
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
        value_pos = pos + 8
    if length != 0xFFFFFFFF:
        available = file_size - value_pos
        if length > available:
            return PixelDataStatus(True, keyword, length=length,
                                   problem=f"pixel data truncated: the element announces {length} bytes "
                                           f"but the file holds only {max(available, 0)}")
        return PixelDataStatus(True, keyword, length=length)
    # Encapsulated (PS3.5 A.4): Basic Offset Table item, fragment items, Sequence Delimitation Item; always LE.
    fh.seek(value_pos)
    items, total = 0, 0
    while True:
        item = fh.read(8)
        if len(item) < 8:
            return PixelDataStatus(True, keyword, encapsulated=True, fragments=max(items - 1, 0),
                                   problem="encapsulated pixel data truncated: the file ends before the "
                                           "sequence delimiter (FFFE,E0DD)")
        igroup, ielem, ilen = struct.unpack("<HHI", item)
        if (igroup, ielem) == (0xFFFE, 0xE0DD):
            break
        if (igroup, ielem) != (0xFFFE, 0xE000):
            return PixelDataStatus(True, keyword, encapsulated=True,
                                   problem=f"encapsulated pixel data malformed: found ({igroup:04X},{ielem:04X}) "
                                           "where an item tag (FFFE,E000) was expected")
        here = fh.tell()
        if ilen > file_size - here:
            return PixelDataStatus(True, keyword, encapsulated=True, fragments=max(items, 0),
                                   problem=f"encapsulated pixel data truncated: a fragment announces {ilen} bytes "
                                           f"but the file holds only {file_size - here}")
        if items > 0:
            total += ilen
        items += 1
        fh.seek(here + ilen)
    fragments = max(items - 1, 0)
    if fragments == 0:
        return PixelDataStatus(True, keyword, encapsulated=True, fragments=0,
                               problem="encapsulated pixel data holds no fragments (no compressed frames)")
    return PixelDataStatus(True, keyword, encapsulated=True, length=total, fragments=fragments)


def _ended_early(ds: Dataset) -> PixelDataStatus | None:
    """The file ended without pixel data: a problem when the last element is cut short, or when the object is an
    image (image SOP class or image attributes present) -- both mean the file was truncated."""
    if not len(ds):
        return PixelDataStatus(problem="the file ends inside or right after the file meta information: truncated file")
    if len(ds):
        last = ds.get_item(list(ds.keys())[-1])
        length = getattr(last, "length", None)
        value = getattr(last, "value", None)
        if isinstance(value, bytes) and length not in (None, 0xFFFFFFFF) and len(value) < int(length or 0):
            return PixelDataStatus(problem=f"the file ends inside element {last.tag} ({len(value)} of {length} bytes): "
                                           "truncated header")
    meta = getattr(ds, "file_meta", None)
    sop = _text(ds, "SOPClassUID") or (_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    name = UID(sop).name if sop else ""
    if "Image Storage" in name or any(k in ds for k in ("Rows", "BitsAllocated", "PhotometricInterpretation")):
        return PixelDataStatus(problem=f"the file ends before the pixel data of this {name or 'image'}: truncated file")
    if sop and not UID(sop).is_valid:
        return PixelDataStatus(problem=f"SOP Class UID '{sop}' is malformed and the file ends early: truncated file")
    return None


def _deflated_pixel_status(p: Path) -> PixelDataStatus:
    # Deflated data sets are inflated in memory by pydicom; read them whole (they are small by nature).
    try:
        ds = pydicom.dcmread(p, force=True)
    except Exception as exc:
        return PixelDataStatus(problem=f"deflated data set cannot be inflated ({_first_line(exc)})")
    for keyword in _PIXEL_TAGS.values():
        if keyword in ds:
            elem = ds[keyword]
            return PixelDataStatus(True, keyword, encapsulated=bool(elem.is_undefined_length),
                                   length=len(elem.value) if elem.value is not None else 0)
    return PixelDataStatus()


# ----------------------------------------------------------------------------- pixels


def read_dicom(path: str | Path) -> Image2D:
    """Read one single-frame greyscale DICOM image into an Image2D (see `read_dicom_detailed`)."""
    return read_dicom_detailed(path)[0]


def read_dicom_detailed(path: str | Path) -> tuple[Image2D, DicomReadFacts]:
    """Read a DICOM image: decode, modality LUT, MONOCHROME1 → MONOCHROME2, VOI window, spacing.

    Raises:
        InputError: not an image, colour, multi-frame, truncated, undecodable or absurdly large;
            the message names the file, the tag and what to do.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # malformed values are handled (and noted) where they are used
        return _read_dicom_detailed(Path(path))


def _read_dicom_detailed(path: Path) -> tuple[Image2D, DicomReadFacts]:
    header = read_header(path)
    p = header.path
    hds, info, pixel = header.dataset, header.info, header.pixel
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
    bits_allocated = _int(hds, "BitsAllocated", 16)
    check_size(p, rows, cols, frames=info.number_of_frames, samples=info.samples_per_pixel,
               bytes_per_sample=max((bits_allocated + 7) // 8, 1))

    notes = list(header.notes)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = pydicom.dcmread(p, force=True)
    except Exception as exc:
        raise InputError(f"{p}: DICOM data set cannot be read ({_first_line(exc)})") from exc
    notes.extend(n for n in _warning_notes(caught) if n not in notes)
    ts = _transfer_syntax(ds)
    if not ts:
        if pixel.encapsulated:
            raise InputError(f"{p}: the pixel data is compressed (encapsulated) but the file meta has no "
                             "(0002,0010) TransferSyntaxUID, so the codec is unknown; re-export the file with its "
                             "file meta information")
        if not header.assumed_transfer_syntax:
            raise InputError(f"{p}: no (0002,0010) TransferSyntaxUID and the encoding cannot be inferred")
        ts = header.assumed_transfer_syntax
        if not hasattr(ds, "file_meta") or ds.file_meta is None:
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = UID(ts)

    arr, decoder, decode_notes = _decode(ds, p, ts)
    notes.extend(decode_notes)
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape != (rows, cols):
        raise InputError(f"{p}: decoded pixel array has shape {arr.shape}, expected ({rows}, {cols}); "
                         "the header does not match the pixel data")

    bits_stored = _int(ds, "BitsStored", bits_allocated) or bits_allocated
    pixel_rep = _int(ds, "PixelRepresentation", 0)
    if pixel.keyword != "PixelData" or arr.dtype.kind == "f":
        stored = (float(np.nanmin(arr)), float(np.nanmax(arr)))
        notes.append("floating-point pixel data: value range taken from the data")
    elif pixel_rep == 1:
        stored = (float(-(1 << (bits_stored - 1))), float((1 << (bits_stored - 1)) - 1))
    else:
        stored = (0.0, float((1 << bits_stored) - 1))

    values, value_range, lut_desc, lut_notes = _modality_lut(arr, ds, stored, pixel_rep, p)
    notes.extend(lut_notes)
    lo, hi = value_range

    invert = pi == "MONOCHROME1"
    shape = _text(ds, "PresentationLUTShape").upper()
    if pi == "MONOCHROME2" and shape == "INVERSE":
        invert = True
        notes.append("PresentationLUTShape INVERSE on MONOCHROME2: displayed inverted, so inverted here")
    mirror: float | None = None
    if invert:
        mirror = lo + hi
        values = (np.float32(mirror) - values).astype(np.float32)
        if pi == "MONOCHROME1":
            notes.append(f"MONOCHROME1 inverted to MONOCHROME2 sense: lo + hi - x over [{lo:g}, {hi:g}]")

    voi, voi_desc, voi_notes = voi_window(ds, mirror=mirror)
    notes.extend(voi_notes)
    spacing, spacing_source, spacing_notes = pixel_spacing(ds)
    notes.extend(spacing_notes)
    if header.presentation_intent == "FOR PROCESSING":
        notes.append("PresentationIntentType FOR PROCESSING: raw detector data, not meant for display")

    image = Image2D(
        pixels=np.ascontiguousarray(values, dtype=np.float32),
        value_range=(float(lo), float(hi)),
        source=SourceRef(path=str(p), kind=InputKind.DICOM),
        pixel_spacing_mm=spacing,
        voi=voi,
        dicom=info if info.transfer_syntax_uid else _with_ts(info, ts),
        notes=tuple(notes),
    )
    facts = DicomReadFacts(
        transfer_syntax=ts, transfer_syntax_name=UID(ts).name, decoder=decoder, bits_allocated=bits_allocated,
        bits_stored=bits_stored, pixel_representation=pixel_rep, stored_range=stored, modality_lut=lut_desc,
        inverted=invert, voi=voi_desc, spacing_source=spacing_source, notes=tuple(notes),
    )
    return image, facts


def _with_ts(info: DicomInfo, ts: str) -> DicomInfo:
    from dataclasses import replace

    return replace(info, transfer_syntax_uid=ts)


def _decode(ds: Dataset, p: Path, ts: str) -> tuple[np.ndarray, str, list[str]]:
    """pydicom first (it tries every installed plugin for the syntax), then GDCM directly.

    For JPEG 2000 the OpenJPEG plugin (pylibjpeg) is asked first: on the RG1 chest it needs ~0.6-0.85x the CPU
    time of pydicom's default choice (GDCM), which matters when several decode workers share the cores.
    """
    errors: list[str] = []
    notes: list[str] = []
    if ts in _J2K_SYNTAXES and _has_plugin(ts, "pylibjpeg"):
        try:
            ds.pixel_array_options(decoding_plugin="pylibjpeg")
            return ds.pixel_array, "pydicom (pylibjpeg-openjpeg)", notes
        except Exception as exc:  # fall through to every plugin
            log.debug("%s: pylibjpeg could not decode (%s); trying all plugins", p, _first_line(exc))
        finally:
            ds.pixel_array_options(decoding_plugin="")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            arr = ds.pixel_array
        notes.extend(_warning_notes(caught))
        return arr, "pydicom", notes
    except Exception as exc:  # every plugin failed, or the data do not match the header
        msg = " ".join(str(exc).split())
        if "less than expected" in msg or "number of bytes" in msg.lower():
            raise InputError(f"{p}: pixel data is shorter than Rows x Columns x BitsAllocated imply ({msg}); "
                             "the file is truncated or its header is wrong") from exc
        errors.append(f"pydicom: {msg}")
    try:
        arr = _decode_gdcm(ds, p)
        notes.append(f"decoded with GDCM directly after pydicom failed ({errors[0][:160]})")
        return arr, "gdcm (fallback)", notes
    except Exception as exc:
        errors.append(f"gdcm: {' '.join(str(exc).split())}")
    raise InputError(f"{p}: pixel data cannot be decoded ({UID(ts).name}, {ts}); tried {'; '.join(errors)}. "
                     "Re-export the image uncompressed or with a standard lossless syntax")


def _has_plugin(ts: str, name: str) -> bool:
    from pydicom.pixels.decoders.base import get_decoder

    try:
        return name in get_decoder(UID(ts)).available_plugins
    except Exception:
        return False


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """GDCM's codecs print to the C stderr; capture it for the error message instead of the terminal."""
    out: list[str] = []
    try:
        saved = os.dup(2)
    except OSError:
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.extend(line for line in tmp.read().decode("utf-8", "replace").splitlines() if line.strip())


def _decode_gdcm(ds: Dataset, p: Path) -> np.ndarray:
    import gdcm  # python-gdcm; imported lazily, only for files pydicom cannot decode

    with _captured_stderr() as messages:
        reader = gdcm.ImageReader()
        reader.SetFileName(str(p))
        ok = reader.Read()
    if not ok:
        raise RuntimeError("GDCM could not read the file" + (f": {messages[-1]}" if messages else ""))
    img = reader.GetImage()
    fmt = img.GetPixelFormat()
    dtypes = {"UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
              "UINT32": np.uint32, "INT32": np.int32, "FLOAT32": np.float32, "FLOAT64": np.float64}
    dtype = dtypes.get(fmt.GetScalarTypeAsString())
    if dtype is None:
        raise RuntimeError(f"unsupported GDCM scalar type {fmt.GetScalarTypeAsString()}")
    with _captured_stderr() as messages:
        buf = img.GetBuffer()
    if not buf:
        raise RuntimeError("GDCM returned no pixel buffer" + (f": {messages[-1]}" if messages else ""))
    raw = buf.encode("utf-8", "surrogateescape") if isinstance(buf, str) else bytes(buf)
    arr = np.frombuffer(raw, dtype=dtype)
    rows, cols = _int(ds, "Rows", 0), _int(ds, "Columns", 0)
    if arr.size != rows * cols:
        raise RuntimeError(f"GDCM returned {arr.size} values for a {rows}x{cols} image")
    arr = arr.reshape(rows, cols)
    bits_stored = _int(ds, "BitsStored", 0)
    if 0 < bits_stored < arr.dtype.itemsize * 8 and arr.dtype.kind in "iu":
        mask = (1 << bits_stored) - 1
        as_unsigned = arr.astype(np.int64) & mask
        if _int(ds, "PixelRepresentation", 0) == 1:
            sign = 1 << (bits_stored - 1)
            as_unsigned = (as_unsigned ^ sign) - sign
        arr = as_unsigned.astype(np.int32 if arr.dtype.kind == "i" else np.uint32)
    return arr


def _lut_data(item: Dataset, ds: Dataset) -> tuple[np.ndarray, int, int]:
    """(lut values, first mapped value, bits) of a Modality/VOI LUT Sequence item."""
    desc = list(item.LUTDescriptor)
    n = int(desc[0]) or 65536
    first = int(desc[1])
    bits = int(desc[2])
    if _int(ds, "PixelRepresentation", 0) == 1 and first >= 32768:
        first -= 65536  # descriptor read as US although the value is signed (US or SS by PixelRepresentation)
    elem = item["LUTData"]
    if isinstance(elem.value, bytes | bytearray):
        little = ds.original_encoding[1] is not False
        data = np.frombuffer(bytes(elem.value), dtype="<u2" if little else ">u2")
    else:
        data = np.asarray(list(elem.value) if isinstance(elem.value, MultiValue | list) else [elem.value])
    data = data.astype(np.float64)[:n]
    if data.size == 0:
        raise ValueError("empty LUTData")
    return data, first, bits


def _modality_lut(arr: np.ndarray, ds: Dataset, stored: tuple[float, float], pixel_rep: int,
                  p: Path) -> tuple[np.ndarray, tuple[float, float], str, list[str]]:
    """PS3.3 C.11.1: LUT Sequence or Rescale Slope/Intercept; returns values, nominal range, description, notes."""
    notes: list[str] = []
    seq = ds.get("ModalityLUTSequence")
    if seq:
        try:
            lut, first, bits = _lut_data(seq[0], ds)
        except Exception as exc:
            raise InputError(f"{p}: (0028,3000) Modality LUT Sequence is malformed ({_first_line(exc)}); "
                             "the pixel values cannot be interpreted") from exc
        idx = np.clip(arr.astype(np.int64) - first, 0, lut.size - 1)
        values = lut[idx].astype(np.float32)
        if "RescaleSlope" in ds:
            notes.append("both Modality LUT Sequence and RescaleSlope present: used the LUT Sequence")
        desc = f"Modality LUT Sequence ({lut.size} entries from {first}, {bits}-bit)"
        notes.append(f"modality LUT applied: {desc}")
        return values, (float(lut.min()), float(lut.max())), desc, notes
    slope_v = _numbers(ds, "RescaleSlope")
    icpt_v = _numbers(ds, "RescaleIntercept")
    slope = slope_v[0] if slope_v else None
    intercept = icpt_v[0] if icpt_v else 0.0
    if slope_v is None and icpt_v is not None and intercept != 0.0:
        slope = 1.0
    if slope is not None and (not math.isfinite(slope) or slope == 0.0 or not math.isfinite(intercept)):
        notes.append(f"RescaleSlope/Intercept {slope}/{intercept} invalid: modality LUT ignored")
        slope = None
    if slope is None or (slope == 1.0 and intercept == 0.0):
        if slope_v == [] or icpt_v == []:
            notes.append("RescaleSlope/RescaleIntercept malformed: modality LUT ignored")
        return arr.astype(np.float32), stored, "none (identity)", notes
    values = (arr.astype(np.float64) * slope + intercept).astype(np.float32)
    a, b = stored[0] * slope + intercept, stored[1] * slope + intercept
    desc = f"RescaleSlope {slope:g} / RescaleIntercept {intercept:g}"
    notes.append(f"modality LUT applied: {desc}")
    return values, (min(a, b), max(a, b)), desc, notes


def voi_window(ds: Dataset, *, mirror: float | None = None) -> tuple[VoiWindow | None, str, list[str]]:
    """The first VOI transform (VOI LUT Sequence preferred, else WindowCenter/Width), or None with a note."""
    notes: list[str] = []
    seq = ds.get("VOILUTSequence")
    if seq:
        try:
            lut, first, bits = _lut_data(seq[0], ds)
            desc = f"VOI LUT Sequence ({lut.size} entries from {first}, {bits}-bit)"
            return VoiWindow(lut=lut.astype(np.float32), first_mapped=float(first), mirror=mirror), desc, notes
        except Exception as exc:
            notes.append(f"VOI LUT Sequence malformed ({_first_line(exc)}): ignored")
    centers = _numbers(ds, "WindowCenter")
    widths = _numbers(ds, "WindowWidth")
    if centers is None and widths is None:
        return None, "none", notes
    if not centers or not widths:
        notes.append("WindowCenter/WindowWidth missing or malformed: no VOI window")
        return None, "none", notes
    center, width = centers[0], widths[0]
    function = (_text(ds, "VOILUTFunction").upper() or "LINEAR").split("\\")[0]
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        notes.append(f"VOILUTFunction '{function}' unknown: LINEAR used")
        function = "LINEAR"
    # PS3.3 C.11.2.1.2: width >= 1 for LINEAR, > 0 for LINEAR_EXACT and SIGMOID.
    valid = math.isfinite(center) and math.isfinite(width) and (width >= 1.0 if function == "LINEAR" else width > 0.0)
    if not valid:
        notes.append(f"WindowCenter/WindowWidth {center:g}/{width:g} invalid for {function}: no VOI window")
        return None, "none", notes
    extra = f" (first of {len(centers)})" if len(centers) > 1 else ""
    desc = f"WindowCenter {center:g} / WindowWidth {width:g} {function}{extra}"
    return VoiWindow(center=center, width=width, function=function, mirror=mirror), desc, notes


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str, list[str]]:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None when unknown (never raises)."""
    notes: list[str] = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        raw = _raw_text(ds, keyword)
        if raw is None:
            continue
        vals = _numbers(ds, keyword)
        if vals is None or len(vals) != 2 or not all(math.isfinite(v) and v > 0 for v in vals):
            notes.append(f"{keyword} '{raw}' is not a valid pair of positive numbers: treated as unknown")
            continue
        if keyword == "ImagerPixelSpacing":
            notes.append("pixel spacing from ImagerPixelSpacing (detector plane, not corrected for magnification)")
        else:
            notes.append("pixel spacing from PixelSpacing")
        return (float(vals[0]), float(vals[1])), keyword, notes
    if not notes:
        notes.append("pixel spacing unknown (no PixelSpacing or ImagerPixelSpacing)")
    return None, "", notes


# ----------------------------------------------------------------------------- small helpers


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    return _text(meta, "TransferSyntaxUID") if meta is not None else ""


def _encoding_syntax(ds: Dataset) -> str:
    implicit, little = ds.original_encoding
    if implicit is None:
        return ""
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _has_meta(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return bool(meta is not None and len(meta))


def _text(ds: Dataset | None, keyword: str) -> str:
    if ds is None:
        return ""
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def _int(ds: Dataset, keyword: str, default: int) -> int:
    try:
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list):
            value = value[0]
        return default if value is None or value == "" else int(value)
    except Exception:
        return default


def _raw_text(ds: Dataset, keyword: str) -> str | None:
    """The element's value as text, without pydicom's validation; None when absent."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    try:
        elem = ds.get_item(tag)
    except Exception:
        return None
    value = getattr(elem, "value", None)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("ascii", "replace").strip("\x00 ")
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def _numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """Numeric values of a DS/IS/FD element; None when absent, [] when present but malformed or empty."""
    raw = _raw_text(ds, keyword)
    if raw is None:
        return None
    out: list[float] = []
    for part in raw.split("\\"):
        part = part.strip().strip("[]'\" ")
        if not part:
            return []
        try:
            out.append(float(part))
        except ValueError:
            return []
    return out


def _warning_notes(caught: list[warnings.WarningMessage]) -> list[str]:
    notes = []
    for w in caught:
        text = " ".join(str(w.message).split())
        log.debug("pydicom warning: %s", text)
        if "Invalid value for VR" in text or "End of file" in text or "Expected explicit VR" in text:
            notes.append(f"pydicom: {text[:200]}")
    return notes


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:240] if text else type(exc).__name__


def probe_size_problem(info: DicomInfo, bits_allocated: int) -> str | None:
    """Size check on header values (used by probe/select before anything is decoded)."""
    if info.rows <= 0 or info.columns <= 0:
        return None
    return size_problem(info.rows, info.columns, frames=info.number_of_frames, samples=info.samples_per_pixel,
                        bytes_per_sample=max((bits_allocated + 7) // 8, 1))
