"""Recognise an input file by its content (magic bytes, DICOM preamble or a parseable dataset), never by its name."""

from __future__ import annotations

import gzip
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from cxrtriage.types import InputKind

_HEAD_BYTES = 1024

# Groups a DICOM data set (or a file meta group written without preamble) starts with in practice.
_BARE_DICOM_FIRST_GROUPS = frozenset({0x0002, 0x0004, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028})
_EXPLICIT_VRS = frozenset(
    b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR US UT UV".split()
)


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What the first bytes of a file say it is.

    ``fmt`` is one of ``dicom``, ``png``, ``jpeg``, ``tiff``, ``nifti``, ``metaimage``, ``nrrd`` or ``""``;
    ``bare_dicom`` is True for a DICOM data set without the 128-byte preamble and ``DICM`` marker.
    """

    kind: InputKind
    fmt: str
    bare_dicom: bool = False
    hint: str = ""
    text: bool = False  # plain text (README, JSON, CSV...): not an image, nothing is wrong with it


def sniff(path: str | Path) -> Sniffed:
    """Recognise ``path`` from its content. Raises OSError when the file cannot be read."""
    p = Path(path)
    with p.open("rb") as fh:
        head = fh.read(_HEAD_BYTES)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return Sniffed(InputKind.DICOM, "dicom")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed(InputKind.RASTER, "png")
    if head.startswith(b"\xff\xd8\xff"):
        return Sniffed(InputKind.RASTER, "jpeg")
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return Sniffed(InputKind.RASTER, "tiff")
    if head[:4] in (b"II+\x00", b"MM\x00+"):
        return Sniffed(InputKind.UNKNOWN, "", hint="BigTIFF is not supported; save the image as a classic TIFF or PNG")
    if _is_nifti(head):
        return Sniffed(InputKind.SITK, "nifti")
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(p, "rb") as gz:
                inner = gz.read(_HEAD_BYTES)
        except zlib.error as exc:  # damaged deflate data: zlib's own exception, not an OSError
            return Sniffed(InputKind.UNKNOWN, "", hint=f"gzip file whose compressed data are damaged ({exc})")
        except (OSError, EOFError):
            inner = b""
        if _is_nifti(inner):
            return Sniffed(InputKind.SITK, "nifti")
        return Sniffed(InputKind.UNKNOWN, "", hint="gzip file whose content is not a NIfTI image")
    if head.startswith(b"NRRD000"):
        return Sniffed(InputKind.SITK, "nrrd")
    if _is_metaimage_header(head):
        return Sniffed(InputKind.SITK, "metaimage")
    if _looks_like_bare_dicom(head):
        return Sniffed(InputKind.DICOM, "dicom", bare_dicom=True)
    if head and _is_text(head):
        return Sniffed(InputKind.UNKNOWN, "", hint="a text file", text=True)
    return Sniffed(InputKind.UNKNOWN, "", hint=_unknown_hint(head))


_CONTROL = bytes(c for c in range(32) if c not in (9, 10, 12, 13)) + b"\x7f"


def _is_text(head: bytes) -> bool:
    if any(c in _CONTROL for c in head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # a multi-byte character cut at the end of the sample
    return True


def _is_nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\x00", b"ni1\x00"):
        return 348 in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0])
    if len(head) >= 12 and head[4:12] in (b"n+2\x00\r\n\x1a\n", b"ni2\x00\r\n\x1a\n"):
        return 540 in (struct.unpack("<i", head[:4])[0], struct.unpack(">i", head[:4])[0])
    return False


def _is_metaimage_header(head: bytes) -> bool:
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        text = head.split(b"\n\x00", 1)[0].decode("ascii", errors="replace")
    first = text.lstrip().split("\n", 1)[0].replace(" ", "")
    keys = {line.split("=", 1)[0].strip() for line in text.splitlines() if "=" in line}
    return (first.startswith(("ObjectType=", "NDims=")) and "ElementType" in keys) or {"NDims", "ElementDataFile"} <= keys


def _looks_like_bare_dicom(head: bytes) -> bool:
    """A data set without preamble: the first element header must be plausible in some DICOM encoding."""
    if len(head) < 8:
        return False
    for endian in ("<", ">"):
        group, elem = struct.unpack(endian + "HH", head[:4])
        if group not in _BARE_DICOM_FIRST_GROUPS or elem > 0x1FFF:
            continue
        if head[4:6] in _EXPLICIT_VRS:
            return True
        (length,) = struct.unpack(endian + "I", head[4:8])
        if length < 0x10000 and endian == "<":  # implicit VR is little endian only
            return True
    return False


def _unknown_hint(head: bytes) -> str:
    if not head:
        return "the file is empty"
    if head.startswith(b"BM"):
        return "looks like a BMP image, which is not supported; convert it to PNG"
    if head[4:8] == b"ftyp" or head.startswith(b"RIFF"):
        return "looks like a video or WebP file, which is not supported"
    if head.startswith(b"%PDF"):
        return "a PDF document, not an image"
    return ""
