"""Checks before any DICOM decoder runs: the Image Pixel module is coherent, and the codestream agrees with it.

Decoders trust what they are given: GDCM aborts its process on BitsAllocated 33, and a JPEG 2000 / JPEG /
JPEG-LS decoder allocates the size its codestream announces, whatever Rows and Columns say. So the header's
pixel description is checked first, then the size in the compressed stream (only the few bytes of its header
are parsed) must equal the header's; every refusal names the element or marker and what to do.
"""

from __future__ import annotations

import struct
from pathlib import Path

from pydicom.dataset import Dataset

from cxrtriage.errors import InputError
from cxrtriage.io.codestream import EOI_SEARCH_BYTES, CodestreamError, StreamSize, j2k_size, jpeg_ends, jpeg_size
from cxrtriage.io.dicom.values import get_int

BITS_ALLOCATED = (1, 8, 16, 32, 64)
_J2K = frozenset({"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92",
                  "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                  "1.2.840.10008.1.2.4.203"})
_JPEG_LS = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})
# JPEG processes 1-29 (.50-.66, most retired) and lossless SV1 (.70)
_JPEG = frozenset({f"1.2.840.10008.1.2.4.{n}" for n in range(50, 67)} | {"1.2.840.10008.1.2.4.70"})
_RLE = "1.2.840.10008.1.2.5"
_HEAD_BYTES = 1 << 20  # enough for any JPEG/J2K main header (APPn segments are at most 64 KiB each)


def check_pixel_module(ds: Dataset, p: Path, keyword: str = "PixelData") -> int:
    """Refuse an incoherent Image Pixel module (PS3.3 C.7.6.3); returns BitsAllocated.

    Raises:
        InputError: BitsAllocated, BitsStored, HighBit or PixelRepresentation is missing where required,
            outside its range, or inconsistent with the others.
    """
    fix = "the header is corrupt; re-export the image"
    if "BitsAllocated" not in ds:
        raise InputError(f"{p}: (0028,0100) BitsAllocated is missing, so the pixel data cannot be laid out; {fix}")
    bits_allocated = get_int(ds, "BitsAllocated", -1)
    if bits_allocated not in BITS_ALLOCATED:
        raise InputError(f"{p}: (0028,0100) BitsAllocated {_shown(ds, 'BitsAllocated')} is invalid "
                         f"(must be one of {', '.join(map(str, BITS_ALLOCATED))}); {fix}")
    if keyword != "PixelData":  # float pixel data: 32 or 64 bits, no BitsStored / HighBit
        return bits_allocated
    bits_stored = get_int(ds, "BitsStored", bits_allocated) if "BitsStored" in ds else bits_allocated
    if not 1 <= bits_stored <= bits_allocated:
        raise InputError(f"{p}: (0028,0101) BitsStored {_shown(ds, 'BitsStored')} is not between 1 and "
                         f"BitsAllocated {bits_allocated}; {fix}")
    if "HighBit" in ds:
        high_bit = get_int(ds, "HighBit", -1)
        if not bits_stored - 1 <= high_bit < bits_allocated:
            raise InputError(f"{p}: (0028,0102) HighBit {_shown(ds, 'HighBit')} is inconsistent with BitsStored "
                             f"{bits_stored} and BitsAllocated {bits_allocated} (expected {bits_stored - 1}); {fix}")
    if "PixelRepresentation" in ds and get_int(ds, "PixelRepresentation", -1) not in (0, 1):
        raise InputError(f"{p}: (0028,0103) PixelRepresentation {_shown(ds, 'PixelRepresentation')} is invalid "
                         f"(0 unsigned, 1 signed); {fix}")
    return bits_allocated


def _shown(ds: Dataset, keyword: str) -> str:
    try:
        return repr(ds[keyword].value)
    except Exception:
        return "(unreadable)"


def check_codestream(ds: Dataset, ts: str, p: Path, *, rows: int, columns: int, samples: int,
                     bits_allocated: int) -> None:
    """The compressed stream of ``ds`` (transfer syntax ``ts``) must describe the image the header describes.

    Checked: JPEG 2000 SIZ (bare or in a JP2 box), JPEG SOF0-15, JPEG-LS SOF55 (+ LSE oversize dimensions),
    the RLE header (segment count and offsets). Native (uncompressed) data need nothing here: pydicom checks
    their length. Syntaxes without a decoder here are left to the decoders, which refuse them.

    Raises:
        InputError: the stream is malformed, or its size / components / precision disagree with the header.
    """
    if ts not in _J2K and ts not in _JPEG_LS and ts not in _JPEG and ts != _RLE:
        return
    value = ds.get("PixelData")
    if not isinstance(value, bytes | bytearray):
        return  # no (readable) pixel data: the decoders say so
    value = bytes(value)
    try:
        spans = _fragment_spans(value)
        head, total = _head(value, spans)
    except (ValueError, struct.error) as exc:
        raise InputError(f"{p}: encapsulated pixel data is malformed ({exc}); the file is damaged") from exc
    if ts == _RLE:
        problem = rle_problem(head, total, samples * max(bits_allocated // 8, 1))
        if problem:
            raise InputError(f"{p}: {problem}; the compressed pixel data are corrupt, re-export or re-send the image")
        return
    codec = "JPEG 2000" if ts in _J2K else "JPEG-LS" if ts in _JPEG_LS else "JPEG"
    try:
        size = j2k_size(head) if ts in _J2K else jpeg_size(head)
    except (CodestreamError, struct.error) as exc:
        raise InputError(f"{p}: the {codec} codestream header is malformed ({exc}); the file is damaged") from exc
    if size.codec != codec:
        raise InputError(f"{p}: the transfer syntax says {codec} but the codestream is {size.codec}; the file is "
                         "mislabelled or damaged")
    _compare(size, p, rows=rows, columns=columns, samples=samples, bits_allocated=bits_allocated)
    # Refused, not decoded with an EOI added: a stream cut short and one whose encoder forgot the EOI (seen in other
    # fields' files, not in the corpus here) cannot be told apart before decoding, and the decoders that read lossless
    # JPEG and JPEG-LS here say nothing either way. JPEG 2000 is left out: OpenJPEG refuses a codestream cut inside a
    # packet, and one cut between packets (a lossy stream's last quality layers) is a valid, coarser image.
    if ts not in _J2K and not jpeg_ends(_tail(value, spans, 2 * EOI_SEARCH_BYTES)):
        raise InputError(f"{p}: the {codec} data stop before the image does (no EOI marker FFD9 at the end of the "
                         "pixel data): the file was cut short when it was written or sent, or its encoder did not "
                         "end the stream, and the rows after the cut would decode as grey; re-send or re-export the "
                         "image")


def _compare(size: StreamSize, p: Path, *, rows: int, columns: int, samples: int, bits_allocated: int) -> None:
    if (size.rows, size.columns) != (rows, columns) or size.components != samples or size.precision > bits_allocated:
        raise InputError(
            f"{p}: the {size.codec} codestream describes a different image ({size.text}) than the header "
            f"({columns}x{rows}, {samples} sample(s) in {bits_allocated} bits); a decoder would allocate what the "
            "stream says, so the file is refused: it is corrupt or forged")


def _fragment_spans(value: bytes) -> list[tuple[int, int]]:
    """(start, length) of each fragment of encapsulated pixel data, the Basic Offset Table (item 0) left out.

    Raises:
        ValueError: an item is malformed or runs past the end, or there is no fragment.
    """
    pos, n = 0, len(value)
    spans: list[tuple[int, int]] = []
    item = 0
    while pos + 8 <= n:
        group, elem, length = struct.unpack_from("<HHI", value, pos)
        if (group, elem) == (0xFFFE, 0xE0DD):
            break
        if (group, elem) != (0xFFFE, 0xE000):
            raise ValueError(f"found ({group:04X},{elem:04X}) where an item (FFFE,E000) was expected")
        if length == 0xFFFFFFFF or pos + 8 + length > n:
            raise ValueError("an item's length runs past the end of the pixel data")
        if item > 0:  # item 0 is the Basic Offset Table
            spans.append((pos + 8, length))
        item += 1
        pos += 8 + length
    if item < 2:
        raise ValueError("no fragments")
    return spans


def first_frame_head(value: bytes) -> tuple[bytes, int]:
    """The first bytes (up to 1 MiB) of the fragments after the Basic Offset Table, and their total length.

    For a single-frame image every fragment belongs to the one frame.
    """
    return _head(value, _fragment_spans(value))


def _tail(value: bytes, spans: list[tuple[int, int]], n: int) -> bytes:
    """The last ``n`` bytes of the fragments before their trailing zero bytes (padding, of any length), across
    fragment boundaries; fewer when the fragments hold fewer."""
    parts: list[bytes] = []
    need, padding = n, True
    for start, length in reversed(spans):
        end = start + length
        while padding and end > start:  # a chunk at a time: no copy of a whole fragment
            chunk = value[max(start, end - 4096):end]
            kept = len(chunk.rstrip(b"\x00"))
            end -= len(chunk) - kept
            padding = kept == 0
        take = min(end - start, need)
        if take > 0:
            parts.append(value[end - take:end])
            need -= take
        if need == 0:
            break
    return b"".join(reversed(parts))


def _head(value: bytes, spans: list[tuple[int, int]]) -> tuple[bytes, int]:
    parts: list[bytes] = []
    have, total = 0, 0
    for start, length in spans:
        total += length
        if have < _HEAD_BYTES:
            parts.append(value[start:start + min(length, _HEAD_BYTES - have)])
            have += len(parts[-1])
    return b"".join(parts), total


def frame_fragments(value: bytes) -> list[memoryview]:
    """The fragments of single-frame encapsulated pixel data, in order, as views of ``value`` (nothing copied).

    Raises:
        ValueError: an item is malformed or runs past the end, or there is no fragment.
    """
    view = memoryview(value)
    return [view[start:start + length] for start, length in _fragment_spans(value)]


def rle_problem(head: bytes, total: int, expected_segments: int) -> str | None:
    """Why an RLE frame's header (PS3.5 G.5) cannot be right for this image, or None."""
    if len(head) < 64:
        return "RLE header cut short (less than 64 bytes)"
    values = struct.unpack("<16I", head[:64])
    count, offsets = values[0], values[1:]
    if count != expected_segments:
        return (f"RLE header announces {count} segment(s) where the header's SamplesPerPixel and BitsAllocated "
                f"need {expected_segments}")
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in zip(used, used[1:], strict=False)) or used[-1] >= total:
        return f"RLE segment offsets {list(used)} are not increasing inside the {total}-byte frame"
    return None
