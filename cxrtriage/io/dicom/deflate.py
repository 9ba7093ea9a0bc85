"""Bound the inflation of a Deflated Explicit VR Little Endian data set before pydicom inflates it in one piece.

pydicom inflates the whole deflated data set in memory (``zlib.decompress``, no limit): a 1 MB file can hold
1 GiB of zeros in one private element. `deflated_problem` walks the element headers of the inflating stream,
inflating at most a chunk at a time and never keeping more than one, and refuses as soon as an element
announces more than the limits allow (so that element is not even inflated): pixel data longer than the image
its Rows/Columns/BitsAllocated/SamplesPerPixel/NumberOfFrames describe (plus `PIXEL_SLACK`), or describing an
image over the per-image memory limit (`cxrtriage.io.limits.size_problem`), other elements above
`MAX_HEADER_BYTES` in total. A data set that passes inflates to less than their sum, which is then what
pydicom's one-piece inflation costs.

Why the pixel data are held to the header's size and not only to `MAX_IMAGE_MEMORY`: pydicom keeps the inflated
data set and copies the pixel element out of it, so 1 GiB of zeros announced as the pixel data of a 64 x 64
image cost 3 GiB before any size check could see the 64 x 64 (found by ``tests/fuzz``).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

from cxrtriage.io.limits import MAX_HEADER_BYTES, MAX_IMAGE_MEMORY, size_problem

DEFLATED = "1.2.840.10008.1.2.1.99"
_CHUNK = 1 << 20
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES = 0x00280010, 0x00280011, 0x00280002, 0x00280100, 0x00280008
_IMAGE_SIZE_TAGS = frozenset({_ROWS, _COLUMNS, _SAMPLES, _BITS, _FRAMES})
PIXEL_SLACK = 1 << 20
"""Pixel data may exceed what the header implies by this much (odd-length padding, trailing bytes pydicom ignores)."""


class _Refused(Exception):
    """The stream breaks a limit (the message says which)."""


_MALFORMED_META = "?"


def file_meta_end(fh: BinaryIO) -> tuple[str, int] | None:
    """(TransferSyntaxUID, offset of the data set) from the preamble and file meta group; None without them.

    The group is walked element by element, as pydicom walks it; a group that cannot be walked (an element cut
    short or announcing more than 1 MiB) gives the syntax ``"?"``.
    """
    fh.seek(0)
    head = fh.read(132)
    if len(head) < 132 or head[128:132] != b"DICM":
        return None
    ts, pos = "", 132
    while True:
        hdr = fh.read(8)
        if len(hdr) < 8:
            return (ts or _MALFORMED_META), pos
        group, elem = struct.unpack("<HH", hdr[:4])
        if group != 0x0002:
            return ts, pos
        if hdr[4:6] in _LONG_VRS:
            extra = fh.read(4)
            if len(extra) < 4:
                return _MALFORMED_META, pos
            (length,) = struct.unpack("<I", extra)
            start = pos + 12
        else:
            (length,) = struct.unpack("<H", hdr[6:8])
            start = pos + 8
        if length == _UNDEFINED or length > 1 << 20:
            return _MALFORMED_META, pos
        value = fh.read(length)
        if elem == 0x0010:
            ts = value.decode("ascii", "replace").strip("\x00 ")
        pos = start + length


def deflated_problem(path: str | Path) -> str | None:
    """Why the deflated data set of ``path`` must not be inflated, or None (also None when it is not deflated)."""
    with Path(path).open("rb") as fh:
        meta = file_meta_end(fh)
        if meta is not None and meta[0] == _MALFORMED_META:
            fh.seek(0)
            if DEFLATED.encode("ascii") in fh.read(1 << 16):  # pydicom may still find the syntax: do not let it inflate
                return "the file meta information of this deflated file is malformed, so its inflation cannot be bounded"
            return None
        if meta is None or meta[0] != DEFLATED:
            return None
        fh.seek(meta[1])
        stream = _Inflating(fh)
        try:
            _walk(stream, explicit=True, top=True, depth=0)
            stream.drain()
        except _Refused as exc:
            return str(exc)
        except (zlib.error, struct.error) as exc:
            return f"the deflated data set cannot be inflated ({exc})"
    return None


class _Inflating:
    """The inflated stream, read forward in bounded chunks; counts every byte against the total limit."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh = fh
        self.z = zlib.decompressobj(-zlib.MAX_WBITS)
        self.buf = b""
        self.pos = 0  # next unread byte of buf
        self.total = 0
        self.header_bytes = 0
        self.limit = MAX_IMAGE_MEMORY + MAX_HEADER_BYTES
        self.image: dict[int, int] = {}  # the top-level image size elements met so far (tag -> value)
        self.pixel_bytes = 0  # pixel data bytes announced so far (fragments of encapsulated data add up)

    def _more(self) -> bytes:
        """The next inflated chunk (at most 1 MiB); b"" at the end of the stream."""
        while not self.z.eof:
            data = self.z.unconsumed_tail or self.fh.read(_CHUNK)
            if not data:
                break
            out = self.z.decompress(data, _CHUNK)
            self.total += len(out)
            if self.total > self.limit:
                raise _Refused(f"the deflated data set inflates to more than {self.limit / 2**30:.2f} GiB")
            if out:
                return out
        return b""

    def read(self, n: int) -> bytes | None:
        """Exactly ``n`` bytes, or None at the end of the stream."""
        while len(self.buf) - self.pos < n:
            out = self._more()
            if not out:
                return None
            self.buf = self.buf[self.pos:] + out
            self.pos = 0
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def skip(self, n: int) -> None:
        while n > 0:
            if self.pos >= len(self.buf):
                self.buf, self.pos = self._more(), 0
                if not self.buf:
                    return
            step = min(n, len(self.buf) - self.pos)
            self.pos += step
            n -= step

    def drain(self) -> None:
        """Inflate what is left (trailing elements pydicom would also inflate), counting it."""
        self.buf, self.pos = b"", 0
        while self._more():
            pass

    def note_image_size(self, tag: int, value: bytes, explicit_vr: bytes) -> None:
        """Remember Rows/Columns/SamplesPerPixel/BitsAllocated (US) or NumberOfFrames (IS); junk is left out."""
        try:
            if tag == _FRAMES:
                self.image[tag] = int(value.decode("ascii").strip("\x00 ") or "1")
            elif len(value) == 2 and explicit_vr in (b"US", b""):
                self.image[tag] = struct.unpack("<H", value)[0]
        except (UnicodeDecodeError, ValueError):
            pass

    def count_pixels(self, n: int) -> None:
        """Refuse pixel data that the image the header describes cannot hold, or whose image is over the limit."""
        self.pixel_bytes += n
        rows, cols = self.image.get(_ROWS, 0), self.image.get(_COLUMNS, 0)
        if rows <= 0 or cols <= 0:
            if self.pixel_bytes > PIXEL_SLACK:
                raise _Refused(f"the deflated pixel data announce {self.pixel_bytes / 2**20:.0f} MiB but no Rows/"
                               "Columns precede them, so their size cannot be checked: a decompression bomb or a "
                               "corrupt file")
            return
        frames, samples = max(self.image.get(_FRAMES, 1), 1), max(self.image.get(_SAMPLES, 1), 1)
        bits = self.image.get(_BITS, 16) or 16
        expected = (rows * cols * frames * samples * bits + 7) // 8
        if self.pixel_bytes > expected + PIXEL_SLACK:
            raise _Refused(f"the deflated pixel data announce {self.pixel_bytes / 2**20:.1f} MiB, but the header "
                           f"describes {cols}x{rows}, {frames} frame(s) of {samples} sample(s) of {bits} bit(s) "
                           f"({expected / 2**20:.1f} MiB): a decompression bomb or a corrupt file")
        if (problem := size_problem(rows, cols, frames=frames, samples=samples, bytes_per_sample=(bits + 7) // 8,
                                    encoded_bytes=self.pixel_bytes)) is not None:
            raise _Refused(f"the deflated data set describes an image that is refused before inflating it: {problem}")

    def count_header(self, n: int, tag: int) -> None:
        self.header_bytes += n
        if self.header_bytes > MAX_HEADER_BYTES:
            raise _Refused(f"the deflated data set holds more than {MAX_HEADER_BYTES >> 20} MiB of elements other "
                           f"than the pixel data (element ({tag >> 16:04X},{tag & 0xFFFF:04X}) alone announces "
                           f"{n / 2**20:.0f} MiB): a decompression bomb or a corrupt file")


def _walk(s: _Inflating, *, explicit: bool, top: bool, depth: int) -> None:
    """Walk elements until the stream ends or an item delimiter (FFFE,E00D) is met."""
    if depth > 64:
        raise _Refused("the deflated data set nests sequences more than 64 deep")
    while True:
        hdr = s.read(8)
        if hdr is None:
            return
        group, elem = struct.unpack("<HH", hdr[:4])
        tag = (group << 16) | elem
        if tag in (_ITEM_END, _SEQ_END):
            return
        vr = hdr[4:6] if explicit and group != 0xFFFE else b""
        if vr in _LONG_VRS:
            extra = s.read(4)
            if extra is None:
                return
            (length,) = struct.unpack("<I", extra)
        elif vr:
            (length,) = struct.unpack("<H", hdr[6:8])
        else:
            (length,) = struct.unpack("<I", hdr[4:8])
        pixel = top and tag in _PIXEL_TAGS
        if length == _UNDEFINED:
            _walk_items(s, explicit=explicit and vr != b"UN", pixel=pixel, tag=tag, depth=depth)
            continue
        if pixel:
            if length > MAX_IMAGE_MEMORY:
                raise _Refused(f"the deflated pixel data announce {length / 2**30:.1f} GiB, over the "
                               f"{MAX_IMAGE_MEMORY / 2**30:.0f} GiB limit per image")
            s.count_pixels(length)
        else:
            s.count_header(length, tag)
        if top and tag in _IMAGE_SIZE_TAGS and length <= 16:
            value = s.read(length)
            if value is None:
                return
            s.note_image_size(tag, value, vr)
            continue
        s.skip(length)


def _walk_items(s: _Inflating, *, explicit: bool, pixel: bool, tag: int, depth: int) -> None:
    """Items of an undefined-length sequence (or encapsulated pixel data) until the sequence delimiter."""
    while True:
        hdr = s.read(8)
        if hdr is None:
            return
        group, elem, length = struct.unpack("<HHI", hdr)
        item = (group << 16) | elem
        if item == _SEQ_END:
            return
        if item != _ITEM:
            raise _Refused(f"the deflated data set is malformed: ({item >> 16:04X},{item & 0xFFFF:04X}) where an item "
                           "was expected")
        if length == _UNDEFINED:
            _walk(s, explicit=explicit, top=False, depth=depth + 1)
            continue
        if pixel:
            s.count_pixels(length)
        else:
            s.count_header(length, tag)
        s.skip(length)
