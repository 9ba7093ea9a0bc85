"""Read PNG / JPEG / TIFF radiographs (8- or 16-bit, grey or grey-in-RGB) into an Image2D; cheap header probes."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from cxrtriage.errors import InputError
from cxrtriage.io.limits import check_size
from cxrtriage.types import Image2D, InputKind, SourceRef

# A pixel is "coloured" when its channels differ by more than this share of full scale; an image is colour
# content when more than COLOUR_FRACTION of its pixels are (JPEG chroma noise on grey images stays far below).
COLOUR_SPREAD = 24 / 255
COLOUR_FRACTION = 0.01


@dataclass(frozen=True, slots=True)
class RasterHeader:
    """Facts from a raster file's header (no pixel decoding)."""

    fmt: str  # png | jpeg | tiff
    rows: int
    columns: int
    channels: int
    bits: int  # bits per sample as stored
    significant_bits: int | None = None  # PNG sBIT: original precision (e.g. 12 in a 16-bit PNG)
    palette: bool = False


def read_raster_header(path: str | Path, fmt: str) -> RasterHeader:
    """Parse the size / depth / channels of a PNG, JPEG or TIFF from its header. Raises InputError if malformed."""
    p = Path(path)
    with p.open("rb") as fh:
        data = fh.read(1 << 16)
        try:
            if fmt == "png":
                return _png_header(data)
            if fmt == "jpeg":
                return _jpeg_header(data)
            if fmt == "tiff":
                return _tiff_header(fh)
        except (struct.error, ValueError, IndexError) as exc:
            raise InputError(f"{p}: malformed {fmt.upper()} header ({exc}); the file is damaged") from exc
    raise InputError(f"{p}: unsupported raster format {fmt!r}")


def _png_header(data: bytes) -> RasterHeader:
    if data[12:16] != b"IHDR":
        raise ValueError("first chunk is not IHDR")
    width, height, depth, ctype = struct.unpack(">IIBB", data[16:26])
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}.get(ctype)
    if channels is None:
        raise ValueError(f"invalid colour type {ctype}")
    sig: int | None = None
    pos = 8
    while pos + 8 <= len(data):  # walk the chunks before IDAT looking for sBIT
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        ctype_b = data[pos + 4:pos + 8]
        if ctype_b == b"IDAT":
            break
        if ctype_b == b"sBIT" and ctype in (0, 4) and pos + 9 <= len(data):
            sig = data[pos + 8]
        pos += 12 + length
    return RasterHeader("png", int(height), int(width), channels, int(depth), sig, palette=ctype == 3)


def _jpeg_header(data: bytes) -> RasterHeader:
    pos = 2
    sof = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ValueError(f"expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in sof:
            precision, height, width, ncomp = struct.unpack(">BHHB", data[pos + 4:pos + 10])
            return RasterHeader("jpeg", int(height), int(width), int(ncomp), int(precision))
        if marker == 0xDA:
            break
        pos += 2 + length
    raise ValueError("no SOF marker in the first 64 KiB")


def _tiff_header(fh: BinaryIO) -> RasterHeader:
    fh.seek(0)
    head = fh.read(8)
    endian = "<" if head[:2] == b"II" else ">"
    (ifd,) = struct.unpack(endian + "I", head[4:8])
    fh.seek(ifd)
    (count,) = struct.unpack(endian + "H", fh.read(2))
    if count > 4096:
        raise ValueError(f"implausible IFD entry count {count}")
    entries = fh.read(12 * count)
    tags: dict[int, int] = {}
    for i in range(count):
        tag, typ, n, value = struct.unpack(endian + "HHI4s", entries[12 * i:12 * i + 12])
        if typ == 3:  # SHORT
            tags[tag] = struct.unpack(endian + "H", value[:2])[0]
            if tag == 258 and n > 2:  # BitsPerSample: offset to n shorts; first is enough
                (off,) = struct.unpack(endian + "I", value)
                here = fh.tell()
                fh.seek(off)
                tags[tag] = struct.unpack(endian + "H", fh.read(2))[0]
                fh.seek(here)
        elif typ == 4:  # LONG
            tags[tag] = struct.unpack(endian + "I", value)[0]
    if 256 not in tags or 257 not in tags:
        raise ValueError("ImageWidth/ImageLength tags missing")
    return RasterHeader("tiff", tags[257], tags[256], tags.get(277, 1), tags.get(258, 1), palette=tags.get(262) == 3)


def is_colour_content(arr: np.ndarray) -> bool:
    """True when a 3/4-channel array holds real colour, not grey stored as RGB (JPEG chroma noise tolerated)."""
    if arr.ndim != 3 or arr.shape[2] < 3:
        return False
    rgb = arr[:, :, :3]
    full = 65535.0 if rgb.dtype == np.uint16 else 255.0 if rgb.dtype == np.uint8 else max(float(np.max(rgb)), 1e-6)
    spread = (rgb.max(axis=2).astype(np.float32) - rgb.min(axis=2).astype(np.float32)) / full
    return float(np.mean(spread > COLOUR_SPREAD)) > COLOUR_FRACTION


def colour_check(path: str | Path) -> bool:
    """Decode a (reduced) copy of a colour raster and tell whether its content is really colour."""
    arr = cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_4)
    if arr is None:
        arr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if arr is None:
        raise InputError(f"{path}: OpenCV could not decode this image (corrupt or unsupported format)")
    return is_colour_content(arr)


def read_raster(path: str | Path, fmt: str | None = None) -> Image2D:
    """Read a PNG/JPEG/TIFF. Grey-in-RGB becomes one channel; true colour becomes luminance (BT.601) with a note.

    ``value_range`` is the nominal range of the stored depth (0..255, 0..65535, or 0..2**sBIT-1 for a PNG that
    declares its significant bits). EXIF orientation is applied, as a viewer would.
    """
    p = Path(path)
    notes: list[str] = []
    header: RasterHeader | None = None
    if fmt is None:
        from cxrtriage.io.sniff import sniff

        fmt = sniff(p).fmt
    if fmt in ("png", "jpeg", "tiff"):
        header = read_raster_header(p, fmt)
        check_size(p, header.rows, header.columns, samples=header.channels, bytes_per_sample=max(header.bits // 8, 1))
    arr = cv2.imread(str(p), cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if arr is None:
        raise InputError(f"{p}: OpenCV could not decode this image (corrupt, truncated or unsupported format); "
                         "re-export it as PNG")
    if header is not None and arr.shape[:2] != (header.rows, header.columns):
        if arr.shape[:2] == (header.columns, header.rows):
            notes.append("EXIF orientation applied (image rotated by 90 degrees)")
        else:
            notes.append(f"decoded size {arr.shape[1]}x{arr.shape[0]} differs from the header's "
                         f"{header.columns}x{header.rows}")
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
            notes.append("alpha channel ignored")
        if arr.shape[2] == 1:
            arr = arr[:, :, 0]
        elif is_colour_content(arr):
            notes.append("colour image converted to luminance (BT.601)")
            arr = 0.114 * arr[:, :, 0].astype(np.float32) + 0.587 * arr[:, :, 1] + 0.299 * arr[:, :, 2]
        else:
            notes.append("grey image stored as RGB: channels averaged")
            arr = arr.astype(np.float32).mean(axis=2)
    if arr.dtype == np.uint8 or (arr.dtype == np.float32 and header is not None and header.bits == 8):
        vr = (0.0, 255.0)
    elif arr.dtype == np.uint16 or (arr.dtype == np.float32 and header is not None and header.bits == 16):
        vr = (0.0, 65535.0)
        if header is not None and header.significant_bits and header.significant_bits < 16:
            # PNG requires samples scaled to the full depth; sBIT only records the original precision.
            notes.append(f"PNG sBIT: originally {header.significant_bits} significant bits (scaled to 16)")
    else:
        vr = (float(np.min(arr)), float(np.max(arr)))
        notes.append(f"{arr.dtype} samples: value range taken from the data")
    return Image2D(
        pixels=np.ascontiguousarray(arr, dtype=np.float32),
        value_range=vr,
        source=SourceRef(path=str(p), kind=InputKind.RASTER),
        notes=tuple(notes),
    )
