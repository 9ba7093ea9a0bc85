"""Image size as a decoder will see it, parsed from the first bytes of a codestream (JPEG, JPEG-LS, JPEG 2000, PNG).

Decoders allocate what the codestream says, not what a DICOM header or a file name says; these parsers read
only the marker segments / boxes / chunks that hold the size, so a size can be checked against the limits (and
against the DICOM header) before any decoder runs. Each raises `CodestreamError` with what is malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass


class CodestreamError(ValueError):
    """The codestream header is malformed or says something no decoder should be given."""


@dataclass(frozen=True, slots=True)
class StreamSize:
    """What a codestream header announces."""

    codec: str  # "JPEG", "JPEG-LS", "JPEG 2000", "PNG"
    rows: int
    columns: int
    components: int
    precision: int  # bits per sample in the stream

    @property
    def text(self) -> str:
        return f"{self.columns}x{self.rows}, {self.components} component(s) of {self.precision} bit(s)"


# SOF0-SOF15 without DHT (C4), JPG (C8) and DAC (CC); F7 is JPEG-LS SOF55.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
_STANDALONE = frozenset({0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9})
_SOS, _LSE, _DNL = 0xDA, 0xF8, 0xDC


def jpeg_size(data: bytes | memoryview) -> StreamSize:
    """Size from the SOF (SOF0-15, or SOF55 for JPEG-LS) of a JPEG / JPEG-LS stream, before its first scan.

    JPEG-LS LSE "oversize dimension" segments (ID 4) replace the SOF's size, as they do in CharLS.
    """
    buf = bytes(data[:2])
    if buf != b"\xff\xd8":
        raise CodestreamError("does not start with an SOI marker (FFD8)")
    pos, found = 2, None
    lse_size: tuple[int, int] | None = None
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            raise CodestreamError(f"expected a marker at byte {pos}, found 0x{data[pos]:02X}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            raise CodestreamError(f"marker FF{marker:02X} at byte {pos} has an invalid length {length}")
        seg = data[pos + 4:pos + 2 + length]
        if marker in _SOF:
            if found is not None:
                raise CodestreamError("more than one SOF marker")
            if len(seg) < 6:
                raise CodestreamError("SOF segment cut short")
            precision, rows, cols, comps = struct.unpack(">BHHB", seg[:6])
            found = StreamSize("JPEG-LS" if marker == 0xF7 else "JPEG", rows, cols, comps, precision)
        elif marker == _LSE and len(seg) >= 2 and seg[0] == 4:
            wxy = seg[1]
            if wxy < 2 or wxy > 4 or len(seg) < 2 + 2 * wxy:
                raise CodestreamError("JPEG-LS oversize-dimension segment (LSE ID 4) is malformed")
            lse_size = (int.from_bytes(seg[2:2 + wxy], "big"), int.from_bytes(seg[2 + wxy:2 + 2 * wxy], "big"))
        elif marker in (_SOS, _DNL):
            break
        pos += 2 + length
    if found is None:
        raise CodestreamError("no SOF marker before the first scan")
    if lse_size is not None:
        found = StreamSize(found.codec, lse_size[0], lse_size[1], found.components, found.precision)
    if found.rows == 0:
        raise CodestreamError("the SOF leaves the number of lines to a DNL marker, which is not supported")
    return found


_EOI = b"\xff\xd9"
EOI_SEARCH_BYTES = 32
"""How far from the end (after trailing zero bytes) a JPEG / JPEG-LS stream's EOI marker may lie: DICOM pads a
fragment to an even length (00), and writers in the shared corpus pad with FF."""


def jpeg_ends(tail: bytes | memoryview) -> bool:
    """Whether ``tail``, the last bytes of a JPEG or JPEG-LS stream, holds its EOI marker (FFD9).

    Why: pylibjpeg's libjpeg decodes a baseline or lossless JPEG that stops early without a word, and the rows it
    never received come out grey (measured on the RG1 chest cut at 60% of its stream: rows 1064-1955 of 1955, no
    message, the image scored). Entropy-coded data cannot hold FFD9 (a data byte FF is followed by 00 in JPEG and by
    a byte below 80 in JPEG-LS), so the marker near the end means the stream reached its end.
    """
    data = bytes(tail).rstrip(b"\x00")
    return _EOI in data[-EOI_SEARCH_BYTES:]


_J2K_SOC, _J2K_SIZ = b"\xff\x4f", b"\xff\x51"
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
MAX_J2K_TILES = 65535  # Isot is 16 bits: a codestream cannot address more tiles


def j2k_size(data: bytes | memoryview) -> StreamSize:
    """Size from the SIZ segment of a JPEG 2000 codestream, bare or in a JP2 file (its ``jp2c`` box).

    Checks the tile grid (at most 65535 tiles) and that every component has the image's size (no subsampling):
    a hostile SIZ can otherwise make a decoder allocate per tile or per component far more than the image.
    """
    if bytes(data[:12]) == _JP2_SIGNATURE:
        header, stream = _jp2_boxes(data)
        size = j2k_size(stream)
        if header is not None and header[:2] != (size.rows, size.columns):
            raise CodestreamError(f"JP2 header box says {header[1]}x{header[0]} but the codestream says "
                                  f"{size.columns}x{size.rows}")
        return size
    if bytes(data[:2]) != _J2K_SOC or bytes(data[2:4]) != _J2K_SIZ:
        raise CodestreamError("does not start with SOC + SIZ markers (FF4F FF51)")
    if len(data) < 6 + 38:
        raise CodestreamError("SIZ segment cut short")
    lsiz, _rsiz, xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack(">HHIIIIIIIIH", data[4:4 + 38])
    if csiz == 0 or lsiz != 38 + 3 * csiz or len(data) < 4 + lsiz:
        raise CodestreamError(f"SIZ segment length {lsiz} does not match its {csiz} component(s)")
    if xsiz <= xo or ysiz <= yo or xt == 0 or yt == 0 or xto > xo or yto > yo or xto + xt <= xo or yto + yt <= yo:
        raise CodestreamError("SIZ image or tile geometry is empty or inconsistent")
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    if tiles > MAX_J2K_TILES:
        raise CodestreamError(f"SIZ tile grid has {tiles} tiles (at most {MAX_J2K_TILES} can be addressed)")
    comps = [struct.unpack(">BBB", data[42 + 3 * i:45 + 3 * i]) for i in range(csiz)]
    if any(dx != 1 or dy != 1 for _, dx, dy in comps):
        raise CodestreamError("SIZ declares subsampled components, not supported for a radiograph")
    precisions = {(ssiz & 0x7F) + 1 for ssiz, _, _ in comps}
    return StreamSize("JPEG 2000", ysiz - yo, xsiz - xo, csiz, max(precisions))


def _jp2_boxes(data: bytes | memoryview) -> tuple[tuple[int, int, int] | None, bytes | memoryview]:
    """(height, width, components) of the ``ihdr`` box (or None) and the contents of the ``jp2c`` box."""
    pos, header = 0, None
    n = len(data)
    while pos + 8 <= n:
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        start = pos + 8
        if length == 1:
            if pos + 16 > n:
                break
            (length,) = struct.unpack(">Q", data[pos + 8:pos + 16])
            start = pos + 16
        elif length == 0:
            length = n - pos
        if length < start - pos:
            raise CodestreamError(f"JP2 box '{bytes(kind).decode('latin-1')}' has an invalid length {length}")
        if kind == b"jp2h":  # superbox: look inside for ihdr
            inner = data[start:pos + length]
            if len(inner) >= 22 and bytes(inner[4:8]) == b"ihdr":
                height, width, nc = struct.unpack(">IIH", inner[8:18])
                header = (height, width, nc)
        elif kind == b"jp2c":
            return header, data[start:pos + length]
        pos += length
    raise CodestreamError("JP2 file without a contiguous codestream box (jp2c)")


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}  # colour type -> channels OpenCV returns (palette expanded to BGR)
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}


def png_size(data: bytes | memoryview) -> StreamSize:
    """Size from the IHDR chunk, which must come first; libpng never inflates more than IHDR allows."""
    if bytes(data[:8]) != _PNG_SIGNATURE:
        raise CodestreamError("no PNG signature")
    if len(data) < 33 or bytes(data[12:16]) != b"IHDR" or struct.unpack(">I", data[8:12])[0] != 13:
        raise CodestreamError("first chunk is not a 13-byte IHDR")
    width, height, depth, ctype = struct.unpack(">IIBB", data[16:26])
    if ctype not in _PNG_CHANNELS:
        raise CodestreamError(f"invalid colour type {ctype}")
    if depth not in _PNG_DEPTHS[ctype]:
        raise CodestreamError(f"invalid bit depth {depth} for colour type {ctype}")
    if width == 0 or height == 0 or width >= 1 << 31 or height >= 1 << 31:
        raise CodestreamError(f"invalid size {width}x{height}")
    return StreamSize("PNG", height, width, _PNG_CHANNELS[ctype], depth)
