"""Read a DICOM header without its pixels, and check the framing of the pixel data element (truncated? fragments?)."""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from cxrtriage.errors import InputError
from cxrtriage.io.dicom.age import patient_age_years
from cxrtriage.io.dicom.deflate import DEFLATED, deflated_problem
from cxrtriage.io.dicom.messages import first_line, warning_notes
from cxrtriage.io.dicom.source import source_facts
from cxrtriage.io.dicom.values import get_int, get_text, transfer_syntax
from cxrtriage.types import DicomInfo

_PIXEL_TAGS = {0x7FE00010: "PixelData", 0x7FE00008: "FloatPixelData", 0x7FE00009: "DoubleFloatPixelData"}
_LONG_LENGTH_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


@dataclass(frozen=True, slots=True)
class PixelDataStatus:
    """What the header scan found about the pixel data element, without reading it."""

    present: bool = False
    keyword: str = ""
    encapsulated: bool = False
    length: int | None = None  # value length for native data; total fragment bytes when encapsulated
    fragments: int | None = None
    problem: str | None = None  # truncated / malformed: the file cannot be decoded
    # Where the element's value lies in the file, as pydicom would hold it (native: the pixel bytes; encapsulated: the
    # items up to the sequence delimiter): (offset, bytes). Set by a header-only scan of a complete element only.
    value_span: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class DicomHeader:
    """A data set read up to (not including) its pixel data, with facts about the rest of the file.

    Built by `read_header` (header-only parse) or `header_from_dataset` (a data set already parsed in
    full, whose ``dataset`` then holds the pixels: keep such a header in the process that parsed it).
    """

    path: Path
    dataset: Dataset
    info: DicomInfo
    pixel: PixelDataStatus
    has_preamble: bool
    assumed_transfer_syntax: str | None = None  # set when the file meta carries none
    presentation_intent: str = ""
    notes: tuple[str, ...] = ()


def read_header(path: str | Path) -> DicomHeader:
    """Read a DICOM header (``stop_before_pixels``) and check the pixel data element's framing.

    Raises:
        InputError: the file is not a parseable DICOM data set.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on invalid values as they are converted; they are noted where they matter
        return _read_header(Path(path))


def header_from_dataset(ds: Dataset, path: str | Path) -> DicomHeader:
    """The `DicomHeader` of a data set already parsed in full (pixels included) from ``path``; reads no file.

    The pixel data element is checked in memory (fragment framing of encapsulated data); an image without one
    is taken as truncated, as `read_header` does (pydicom drops encapsulated pixel data cut short). The warnings
    pydicom gave while the caller parsed the file are not known here, so they are not in the notes.

    Raises:
        InputError: the data set holds no usable elements.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        has_preamble = getattr(ds, "preamble", None) is not None
        pixel = pixel_status_in(ds)
        if not len(ds) and _has_meta(ds):
            # pydicom returns only the file meta when the data set is cut short, wherever the cut is
            pixel = PixelDataStatus(problem="no data set elements after the file meta information: truncated file")
        elif not pixel.present:
            pixel = _ended_early(ds) or pixel
        return _header(Path(path), ds, pixel, has_preamble, [])


def check_inflation(path: str | Path) -> None:
    """Refuse a Deflated Explicit VR Little Endian file whose inflation would exceed the limits (see `deflate`).

    Call it before anything that makes pydicom parse the file: pydicom inflates a deflated data set in one piece,
    without a limit. Files in any other transfer syntax pass at the cost of reading their file meta.

    Raises:
        InputError: the deflated data set would inflate beyond `MAX_IMAGE_MEMORY` + `MAX_HEADER_BYTES`.
    """
    problem = deflated_problem(path)
    if problem is not None:
        raise InputError(f"{path}: {problem}; the file is refused before it is inflated. Re-export it uncompressed "
                         "or check where it came from")


def _read_header(p: Path) -> DicomHeader:
    file_size = p.stat().st_size
    notes: list[str] = []
    check_inflation(p)
    with p.open("rb") as fh:
        preamble = fh.read(132)
        has_preamble = len(preamble) == 132 and preamble[128:132] == b"DICM"
        fh.seek(0)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
        except RecursionError as exc:  # pydicom parses nested sequences recursively: a transfer cannot cause this
            raise InputError(f"{p}: not a readable DICOM file (its sequences are nested too deeply to parse); the file "
                             "is malformed or hostile: check where it came from") from exc
        except Exception as exc:  # pydicom raises many types on garbage
            raise InputError(f"{p}: not a readable DICOM file ({type(exc).__name__}: {first_line(exc)}); "
                             "check that the file was transferred completely") from exc
        notes.extend(warning_notes(caught))
        stop_pos = fh.tell()
        if transfer_syntax(ds) == DEFLATED:
            pixel = _deflated_pixel_status(p)
        else:
            pixel = _scan_pixel_data(fh, ds, file_size)
            if not pixel.present and stop_pos >= file_size:
                pixel = _ended_early(ds) or pixel
    return _header(p, ds, pixel, has_preamble, notes)


def _header(p: Path, ds: Dataset, pixel: PixelDataStatus, has_preamble: bool, notes: list[str]) -> DicomHeader:
    """The checks and facts shared by a header-only parse and a full one."""
    if len(ds) == 0 and not _has_meta(ds):
        raise InputError(f"{p}: no DICOM elements could be parsed; the file is not DICOM or is corrupt")
    assumed = None
    if not transfer_syntax(ds):
        assumed = _encoding_syntax(ds)
        if assumed:
            notes.append(f"file meta has no TransferSyntaxUID: assumed {UID(assumed).name} "
                         "(the encoding the data set was parsed with)")
    if not has_preamble:
        notes.append("no 128-byte preamble / 'DICM' marker: read as a bare data set")
    info = dicom_info(ds, p)
    intent = get_text(ds, "PresentationIntentType").upper()
    if not info.sop_class_uid and not info.modality and "Rows" not in ds:
        if pixel.problem is None and not pixel.present and len(ds) < 3:
            raise InputError(f"{p}: parsed as DICOM but holds no usable elements; the file is corrupt or not DICOM")
    return DicomHeader(path=p, dataset=ds, info=info, pixel=pixel, has_preamble=has_preamble,
                       assumed_transfer_syntax=assumed, presentation_intent=intent,
                       notes=tuple(notes))


def dicom_info(ds: Dataset, path: Path | None = None) -> DicomInfo:
    """Technical header facts and the patient's age (no patient identifiers)."""
    meta = getattr(ds, "file_meta", None)
    sop_class = get_text(ds, "SOPClassUID") or (get_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    sop_inst = get_text(ds, "SOPInstanceUID") or (get_text(meta, "MediaStorageSOPInstanceUID") if meta is not None else "")
    return DicomInfo(
        sop_class_uid=sop_class,
        sop_instance_uid=sop_inst,
        study_instance_uid=get_text(ds, "StudyInstanceUID"),
        series_instance_uid=get_text(ds, "SeriesInstanceUID"),
        modality=get_text(ds, "Modality").upper(),
        body_part_examined=get_text(ds, "BodyPartExamined"),
        view_position=get_text(ds, "ViewPosition"),
        photometric_interpretation=get_text(ds, "PhotometricInterpretation").upper(),
        transfer_syntax_uid=transfer_syntax(ds),
        bits_stored=get_int(ds, "BitsStored", 0),
        rows=get_int(ds, "Rows", 0),
        columns=get_int(ds, "Columns", 0),
        number_of_frames=max(get_int(ds, "NumberOfFrames", 1), 1),
        samples_per_pixel=get_int(ds, "SamplesPerPixel", 1),
        image_laterality=get_text(ds, "ImageLaterality") or get_text(ds, "Laterality"),
        series_description=get_text(ds, "SeriesDescription"),
        **source_facts(ds),
        patient_age_years=patient_age_years(ds),
    )


def _scan_pixel_data(fh: BinaryIO, ds: Dataset, file_size: int) -> PixelDataStatus:
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
        return PixelDataStatus(True, keyword, length=length, value_span=(value_pos, length))
    fh.seek(value_pos)
    status = _scan_fragments(fh, keyword, file_size)
    if status.problem is None:  # the scan stopped right after the sequence delimiter item (8 bytes)
        status = replace(status, value_span=(value_pos, fh.tell() - 8 - value_pos))
    return status


def _scan_fragments(fh: BinaryIO, keyword: str, end: int) -> PixelDataStatus:
    """Walk encapsulated pixel data from ``fh``'s position to ``end``, reading item headers only.

    PS3.5 A.4: Basic Offset Table item, fragment items, Sequence Delimitation Item; always little endian.
    """
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
        if ilen > end - here:
            return PixelDataStatus(True, keyword, encapsulated=True, fragments=max(items, 0),
                                   problem=f"encapsulated pixel data truncated: a fragment announces {ilen} bytes "
                                           f"but the file holds only {end - here}")
        if items > 0:
            total += ilen
        items += 1
        fh.seek(here + ilen)
    fragments = max(items - 1, 0)
    if fragments == 0:
        return PixelDataStatus(True, keyword, encapsulated=True, fragments=0,
                               problem="encapsulated pixel data holds no fragments (no compressed frames)")
    return PixelDataStatus(True, keyword, encapsulated=True, length=total, fragments=fragments)


def pixel_status_in(ds: Dataset) -> PixelDataStatus:
    """`PixelDataStatus` of a data set parsed with its pixels (fragment framing checked in memory)."""
    for tag, keyword in _PIXEL_TAGS.items():
        if tag not in ds:
            continue
        # Until the element is first accessed, pydicom keeps it raw, with the length the file announced.
        announced = getattr(ds.get_item(tag), "length", None)
        elem = ds[tag]
        value = elem.value if elem.value is not None else b""
        if not elem.is_undefined_length:
            if announced not in (None, 0xFFFFFFFF) and len(value) < announced:
                return PixelDataStatus(True, keyword, length=announced,
                                       problem=f"pixel data truncated: the element announces {announced} bytes "
                                               f"but the file holds only {len(value)}")
            return PixelDataStatus(True, keyword, length=len(value))
        # pydicom keeps encapsulated data as the bytes between the element header and the sequence delimiter
        # (the delimiter item itself is not kept): walk them as the file scan does, then add the delimiter.
        buf = io.BytesIO(bytes(value) + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
        return _scan_fragments(buf, keyword, len(value) + 8)
    return PixelDataStatus()


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
    sop = get_text(ds, "SOPClassUID") or (get_text(meta, "MediaStorageSOPClassUID") if meta is not None else "")
    name = UID(sop).name if sop else ""
    if "Image Storage" in name or any(k in ds for k in ("Rows", "BitsAllocated", "PhotometricInterpretation")):
        return PixelDataStatus(problem=f"the file ends before the pixel data of this {name or 'image'}: truncated file")
    if sop and not UID(sop).is_valid:
        return PixelDataStatus(problem=f"SOP Class UID '{sop}' is malformed and the file ends early: truncated file")
    return None


def _deflated_pixel_status(p: Path) -> PixelDataStatus:
    # Deflated data sets are inflated in memory by pydicom; read them whole (`check_inflation` bounded them).
    try:
        ds = pydicom.dcmread(p, force=True)
    except Exception as exc:
        return PixelDataStatus(problem=f"deflated data set cannot be inflated ({first_line(exc)})")
    return pixel_status_in(ds)


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
