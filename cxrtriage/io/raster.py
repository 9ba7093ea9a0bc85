"""Read PNG / JPEG / TIFF radiographs (8- or 16-bit, grey or grey-in-RGB) into an Image2D; cheap header probes."""

from __future__ import annotations

import logging
import mmap
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from cxrtriage.errors import InputError
from cxrtriage.io.codestream import jpeg_size, png_size
from cxrtriage.io.limits import check_size
from cxrtriage.io.native import decoder_notes, held_native_output
from cxrtriage.io.reduced import (
    ReducedDecodeError,
    ReducedPixels,
    area_scale,
    averaged_text,
    block_average,
    decode_jpeg_reduced,
)
from cxrtriage.types import Image2D, InputKind, SourceRef

log = logging.getLogger(__name__)

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
    tile_bytes: int = 0  # TIFF: one decoded tile, which OpenCV allocates on top of the image

    @property
    def bytes_per_sample(self) -> int:
        return max((self.bits + 7) // 8, 1)


def read_raster_header(path: str | Path, fmt: str) -> RasterHeader:
    """Parse the size / depth / channels of a PNG, JPEG or TIFF from its header. Raises InputError if malformed.

    The size is the one the decoder will use: PNG IHDR, the JPEG SOF, the first TIFF IFD as libtiff reads it
    (a tag listed twice is refused: libtiff keeps the first value, a naive parser the last).
    """
    p = Path(path)
    with p.open("rb") as fh:
        try:
            if fmt == "png":
                header = _png_header(fh.read(1 << 16))
                _check_png_chunks(fh)
                return header
            if fmt == "jpeg":
                # APPn segments (EXIF, ICC profiles) may precede the SOF: each is at most 64 KiB
                return _jpeg_header(fh.read(1 << 20))
            if fmt == "tiff":
                return _tiff_header(fh)
        except (struct.error, ValueError, IndexError) as exc:
            raise InputError(f"{p}: malformed {fmt.upper()} header ({exc}); the file is damaged") from exc
    raise InputError(f"{p}: unsupported raster format {fmt!r}")


def _png_header(data: bytes) -> RasterHeader:
    size = png_size(data)
    ctype = data[25]
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
    return RasterHeader("png", size.rows, size.columns, size.components, size.precision, sig, palette=ctype == 3)


def _check_png_chunks(fh: BinaryIO) -> None:
    """Refuse a chunk other than IDAT whose announced length runs past the end of the file.

    libpng allocates a buffer of the announced length for such a chunk (tEXt, iCCP, ...) before it reads it, so a
    10 KB PNG announcing a 2 GiB tEXt chunk makes OpenCV allocate 2 GiB; a chunk the file cannot hold only says
    that the file is damaged. IDAT is streamed through zlib, so a file cut short in its image data is left to the
    decoder. Reads only the 8-byte chunk headers, through a memory map: a radiograph's PNG holds hundreds of IDAT
    chunks, and a seek and a read for each cost ~1 ms of the ~30 ms its decode takes.
    """
    end = fh.seek(0, 2)
    if end < 16:  # no room for a chunk header after the signature (and mmap refuses an empty file)
        return
    with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        pos = 8
        while pos + 8 <= end:
            length, ctype = struct.unpack_from(">I4s", data, pos)
            if ctype != b"IDAT" and pos + 12 + length > end:
                name = ctype.decode("ascii") if ctype.isalpha() else f"0x{ctype.hex()}"  # a damaged type: its bytes
                raise ValueError(f"the {name} chunk at byte {pos} announces {length} bytes, past the end of the file "
                                 f"({end} bytes)")
            if ctype == b"IEND":
                return
            pos += 12 + length


def _jpeg_header(data: bytes) -> RasterHeader:
    size = jpeg_size(data)
    return RasterHeader("jpeg", size.rows, size.columns, size.components, size.precision)


_TIFF_NAMES = {256: "ImageWidth", 257: "ImageLength", 258: "BitsPerSample", 262: "PhotometricInterpretation",
               277: "SamplesPerPixel", 278: "RowsPerStrip", 322: "TileWidth", 323: "TileLength"}
_TIFF_SHORT, _TIFF_LONG = 3, 4


def _tiff_header(fh: BinaryIO) -> RasterHeader:
    """The first IFD, read as libtiff (OpenCV's TIFF decoder) reads it; a duplicated tag is refused."""
    fh.seek(0)
    head = fh.read(8)
    endian = "<" if head[:2] == b"II" else ">"
    magic, ifd = struct.unpack(endian + "HI", head[2:8])
    if magic != 42:
        raise ValueError(f"not a classic TIFF (version {magic})")
    fh.seek(ifd)
    (count,) = struct.unpack(endian + "H", fh.read(2))
    if count == 0 or count > 4096:
        raise ValueError(f"implausible IFD entry count {count}")
    entries = fh.read(12 * count)
    if len(entries) < 12 * count:
        raise ValueError("the first IFD is cut short")
    tags: dict[int, int] = {}
    seen: set[int] = set()
    for i in range(count):
        tag, typ, n, value = struct.unpack(endian + "HHI4s", entries[12 * i:12 * i + 12])
        if tag in seen:
            name = _TIFF_NAMES.get(tag, "tag")
            raise ValueError(f"{name} ({tag}) appears twice in the first IFD; decoders disagree on which one counts")
        seen.add(tag)
        if tag not in _TIFF_NAMES or typ not in (_TIFF_SHORT, _TIFF_LONG) or n == 0:
            continue
        width = 2 if typ == _TIFF_SHORT else 4
        if n * width <= 4:
            raw = value[:n * width]
        else:  # values stored elsewhere (BitsPerSample of RGB): read them, keep the largest
            (off,) = struct.unpack(endian + "I", value)
            here = fh.tell()
            fh.seek(off)
            raw = fh.read(min(n, 16) * width)
            fh.seek(here)
        fmt = endian + ("H" if typ == _TIFF_SHORT else "I") * (len(raw) // width)
        values = struct.unpack(fmt, raw)
        if not values:
            raise ValueError(f"{_TIFF_NAMES[tag]} ({tag}) value is cut short")
        tags[tag] = max(values)
    if 256 not in tags or 257 not in tags:
        raise ValueError("ImageWidth/ImageLength tags missing")
    rows, cols = tags[257], tags[256]
    channels, bits = tags.get(277, 1), tags.get(258, 1)
    if rows == 0 or cols == 0 or channels == 0 or bits == 0:
        raise ValueError(f"empty image ({cols}x{rows}, {channels} sample(s) of {bits} bit(s))")
    tile = tags.get(322, 0) * tags.get(323, 0)
    return RasterHeader("tiff", rows, cols, channels, bits, palette=tags.get(262) == 3,
                        tile_bytes=tile * channels * ((bits + 7) // 8))


def is_colour_content(arr: np.ndarray) -> bool:
    """True when a 3/4-channel array holds real colour, not grey stored as RGB (JPEG chroma noise tolerated)."""
    if arr.ndim != 3 or arr.shape[2] < 3:
        return False
    rgb = arr[:, :, :3]
    full = 65535.0 if rgb.dtype == np.uint16 else 255.0 if rgb.dtype == np.uint8 else max(float(np.max(rgb)), 1e-6)
    spread = (rgb.max(axis=2).astype(np.float32) - rgb.min(axis=2).astype(np.float32)) / full
    return float(np.mean(spread > COLOUR_SPREAD)) > COLOUR_FRACTION


def decode_file(path: str | Path, flags: int) -> np.ndarray | None:
    """``cv2.imdecode`` of the file's bytes; None when it cannot be read or decoded (as ``cv2.imread`` would say).

    OpenCV is never given a path: ``cv2.imread`` crashes the process on a file name that is not valid UTF-8
    (bytes from another encoding, kept by Python as surrogates); Python opens any name the OS can.
    """
    return decode_file_noted(path, flags)[0]


def decode_file_noted(path: str | Path, flags: int) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """`decode_file`, and what the codec printed meanwhile (libjpeg's "Corrupt JPEG data: ...", libpng's
    warnings), held back from the terminal (`cxrtriage.io.native`)."""
    try:
        data = np.fromfile(Path(path), dtype=np.uint8)
    except OSError:
        return None, ()
    if data.size == 0:
        return None, ()
    with held_native_output() as held:
        try:
            arr = cv2.imdecode(data, flags)
        except cv2.error:
            arr = None
    return arr, held.messages()


def colour_check(path: str | Path) -> bool:
    """Decode a (reduced) copy of a colour raster and tell whether its content is really colour."""
    arr = decode_file(path, cv2.IMREAD_REDUCED_COLOR_4)
    if arr is None:
        arr = decode_file(path, cv2.IMREAD_COLOR)
    if arr is None:
        raise InputError(f"{path}: {undecodable_reason(path)}")
    return is_colour_content(arr)


# The last bytes of a complete file of each format: PNG's IEND chunk (its type and fixed CRC), JPEG's EOI marker.
_END_MARKERS = {"PNG": (b"IEND\xaeB`\x82", "IEND chunk"), "JPEG": (b"\xff\xd9", "end-of-image marker (FFD9)")}
# How far from the end the marker is looked for: writers may pad a file or append a few bytes after it. Kept small, as
# a JPEG's EXIF thumbnail (near its start) holds an FFD9 of its own, which must not pass for the end of a cut file.
_END_WINDOW = 1024


def undecodable_reason(path: str | Path, messages: tuple[str, ...] = ()) -> str:
    """Why a PNG/JPEG/TIFF file the decoder refused cannot be read, and what to do, from the file's own bytes.

    The format is named from the content (a file's name may say otherwise); a PNG or JPEG without its end marker
    near the end of the file is said to be truncated, the usual cause (an interrupted copy, download or transfer).
    ``messages`` are what the codec printed (libjpeg's "Premature end of JPEG file"...).
    """
    p = Path(path)
    try:
        with p.open("rb") as fh:
            head = fh.read(8)
            size = fh.seek(0, 2)
            fh.seek(max(size - _END_WINDOW, 0))
            tail = fh.read()
    except OSError as exc:
        return f"cannot read the file ({exc.strerror or exc}); check the path and permissions"
    fmt = ("PNG" if head.startswith(b"\x89PNG\r\n\x1a\n") else "JPEG" if head.startswith(b"\xff\xd8\xff")
           else "TIFF" if head[:4] in (b"II*\x00", b"MM\x00*") else "")
    said = f" ({'; '.join(messages)})" if messages else ""
    what = f"this {fmt} file" if fmt else "this file"
    if fmt in _END_MARKERS and _END_MARKERS[fmt][0] not in tail:
        return (f"OpenCV could not decode {what}{said}: it ends ({size} bytes) without its {_END_MARKERS[fmt][1]}, "
                "so it is likely truncated (cut short by an interrupted copy, download or transfer); re-send or "
                "re-export the original image")
    return (f"OpenCV could not decode {what}{said}: its content is corrupt or uses a feature OpenCV does not "
            "support; re-export the image from its source or re-send the original")


def _reduced_jpeg(p: Path, header: RasterHeader, max_scale: Callable[[tuple[int, int]], float]) -> ReducedPixels | None:
    """An 8-bit grey JPEG file at the reduction its consumers allow (libjpeg DCT scaling), or None."""
    if header.fmt != "jpeg" or header.channels != 1 or header.bits != 8:
        return None
    data = np.fromfile(p, dtype=np.uint8)
    try:
        return decode_jpeg_reduced(data, rows=header.rows, columns=header.columns, components=1, precision=8,
                                   max_scale=max_scale((header.rows, header.columns)))
    except ReducedDecodeError as exc:
        log.debug("%s: reduced-resolution decoding not used (%s); decoding in full", p, exc)
        return None


def read_raster(path: str | Path, fmt: str | None = None, *,
                max_scale: Callable[[tuple[int, int]], float] | None = None) -> Image2D:
    """Read a PNG/JPEG/TIFF. Grey-in-RGB becomes one channel; true colour becomes luminance (BT.601) with a note.

    ``value_range`` is the nominal range of the stored depth (0..255, 0..65535, or 0..2**sBIT-1 for a PNG that
    declares its significant bits). EXIF orientation is applied, as a viewer would.

    ``max_scale`` (see `cxrtriage.io.dicom.read_dicom`) lets an 8-bit greyscale JPEG be decoded at 1/2, 1/4 or 1/8
    (libjpeg DCT scaling); every other file, or a reduced decode that fails, is decoded in full and then block
    averaged (`cxrtriage.io.reduced.block_average`) as far as ``max_scale`` allows.
    """
    return read_raster_detailed(path, fmt, max_scale=max_scale)[0]


def read_raster_detailed(path: str | Path, fmt: str | None = None, *,
                         max_scale: Callable[[tuple[int, int]], float] | None = None) -> tuple[Image2D, str]:
    """`read_raster`, and how the pixels were reduced (for ``inspect``): '1/4: 489x461 ... by ...' or why not."""
    p = Path(path)
    notes: list[str] = []
    header: RasterHeader | None = None
    if fmt is None:
        from cxrtriage.io.sniff import sniff

        fmt = sniff(p).fmt
    if fmt in ("png", "jpeg", "tiff"):
        header = read_raster_header(p, fmt)
        check_size(p, header.rows, header.columns, samples=header.channels, bytes_per_sample=header.bytes_per_sample,
                   reader="raster", encoded_bytes=p.stat().st_size + header.tile_bytes)
    if max_scale is not None and header is not None:
        red = _reduced_jpeg(p, header, max_scale)
        if red is not None:
            h, w = red.samples.shape
            return (Image2D(pixels=red.samples.astype(np.float32), value_range=(0.0, 255.0),
                            source=SourceRef(path=str(p), kind=InputKind.RASTER), notes=red.notes,
                            full_shape=(header.rows, header.columns), scale=red.scale),
                    f"1/{red.scale}: {w}x{h} decoded of {header.columns}x{header.rows} by {red.decoder}")
    arr, messages = decode_file_noted(p, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if arr is None:
        raise InputError(f"{p}: {undecodable_reason(p, messages)}")
    notes.extend(decoder_notes(messages, "OpenCV"))
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
    rows, cols = arr.shape
    scale = area_scale((rows, cols), max_scale)
    if scale > 1:
        pixels = block_average(arr, scale)
        how = averaged_text(scale, pixels.shape, (rows, cols), "by OpenCV")
    else:
        pixels = np.ascontiguousarray(arr, dtype=np.float32)
        how = "none: the consumers need the full resolution" if max_scale is not None else "none (full resolution)"
    image = Image2D(pixels=pixels, value_range=vr, source=SourceRef(path=str(p), kind=InputKind.RASTER),
                    notes=tuple(notes), full_shape=(rows, cols) if scale > 1 else None, scale=scale)
    return image, how
