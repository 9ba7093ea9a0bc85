"""Byte-level structure of the files the fuzz corpus mutates: DICOM elements and encapsulated items, JPEG/JPEG-LS
SOF and JPEG 2000 SIZ/COD markers, RLE headers, PNG chunks; and the compressed streams of the bombs (deflate, zlib,
gzip of many zeros built in milliseconds, never holding the inflated bytes).

Only what the mutations need: the walkers read *valid* files (the bases the corpus starts from); mutated bytes are
never parsed again.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

DEFLATED_LE = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE = "1.2.840.10008.1.2"
PIXEL_DATA = 0x7FE00010
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


# --------------------------------------------------------------------------- DICOM


@dataclass(frozen=True, slots=True)
class Item:
    """An item of encapsulated pixel data: its header at ``start`` (tag, 4-byte length at ``start + 4``)."""

    start: int
    value: int
    length: int

    @property
    def end(self) -> int:
        return self.value + self.length


@dataclass(frozen=True, slots=True)
class Elem:
    """A top-level data element: header at ``start``, length field at ``len_off`` (``len_size`` bytes), value at
    ``value``; ``items`` for encapsulated pixel data (the basic offset table first)."""

    tag: int
    vr: str
    start: int
    len_off: int
    len_size: int
    value: int
    length: int
    end: int
    explicit: bool
    items: tuple[Item, ...] = ()

    @property
    def group(self) -> int:
        return self.tag >> 16


@dataclass(frozen=True, slots=True)
class DicomLayout:
    """Where everything is in a DICOM file: the meta group, the data set's top-level elements, the transfer syntax."""

    elems: tuple[Elem, ...]
    transfer_syntax: str
    dataset_start: int  # first byte after the file meta group (or 0 / 132 when there is none)

    def get(self, tag: int) -> Elem | None:
        return next((e for e in self.elems if e.tag == tag), None)

    def __getitem__(self, tag: int) -> Elem:
        e = self.get(tag)
        if e is None:
            raise KeyError(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) not in this file")
        return e

    @property
    def meta(self) -> tuple[Elem, ...]:
        return tuple(e for e in self.elems if e.group == 2)

    @property
    def dataset(self) -> tuple[Elem, ...]:
        return tuple(e for e in self.elems if e.group != 2)

    @property
    def fragments(self) -> tuple[Item, ...]:
        """Encapsulated pixel data items after the basic offset table (empty for native pixel data)."""
        px = self.get(PIXEL_DATA)
        return px.items[1:] if px is not None and px.items else ()


def _u16(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<H", data, off)[0])


def _u32(data: bytes, off: int) -> int:
    return int(struct.unpack_from("<I", data, off)[0])


def _tag(data: bytes, off: int) -> int:
    return (_u16(data, off) << 16) | _u16(data, off + 2)


def _read_elem(data: bytes, off: int, explicit: bool) -> Elem:
    tag = _tag(data, off)
    if tag in (ITEM, ITEM_END, SEQ_END):
        raise ValueError(f"item tag at top level, offset {off}")
    if explicit:
        vr = data[off + 4:off + 6]
        if vr in _LONG_VRS:
            len_off, len_size = off + 8, 4
        else:
            len_off, len_size = off + 6, 2
        vr_s = vr.decode("ascii", "replace")
    else:
        len_off, len_size, vr_s = off + 4, 4, ""
    length = _u32(data, len_off) if len_size == 4 else _u16(data, len_off)
    value = len_off + len_size
    if length != UNDEFINED:
        return Elem(tag, vr_s, off, len_off, len_size, value, length, value + length, explicit)
    if tag == PIXEL_DATA:
        items, end = _encapsulated_items(data, value)
        return Elem(tag, vr_s, off, len_off, len_size, value, length, end, explicit, items)
    end = _skip_sequence(data, value, explicit)
    return Elem(tag, vr_s or "SQ", off, len_off, len_size, value, length, end, explicit)


def _encapsulated_items(data: bytes, off: int) -> tuple[tuple[Item, ...], int]:
    items: list[Item] = []
    while off + 8 <= len(data):
        tag, length = _tag(data, off), _u32(data, off + 4)
        if tag == SEQ_END:
            return tuple(items), off + 8
        if tag != ITEM:
            raise ValueError(f"unexpected tag {tag:08X} in encapsulated pixel data at {off}")
        items.append(Item(off, off + 8, length))
        off += 8 + length
    raise ValueError("encapsulated pixel data without a sequence delimiter")


def _skip_sequence(data: bytes, off: int, explicit: bool) -> int:
    """The offset just after an undefined-length sequence whose first item starts at ``off``."""
    while off + 8 <= len(data):
        tag, length = _tag(data, off), _u32(data, off + 4)
        if tag == SEQ_END:
            return off + 8
        if tag != ITEM:
            raise ValueError(f"unexpected tag {tag:08X} in a sequence at {off}")
        off += 8
        if length != UNDEFINED:
            off += length
            continue
        while _tag(data, off) != ITEM_END:
            off = _read_elem(data, off, explicit).end
        off += 8
    raise ValueError("sequence without a delimiter")


def dicom_layout(data: bytes) -> DicomLayout:
    """Walk a valid DICOM file (with or without preamble; explicit or implicit VR little endian; a deflated data
    set is not walked)."""
    off = 132 if data[128:132] == b"DICM" else 0
    elems: list[Elem] = []
    while off + 8 <= len(data) and _u16(data, off) == 0x0002:
        e = _read_elem(data, off, explicit=True)
        elems.append(e)
        off = e.end
    dataset_start = off
    ts_elem = next((e for e in elems if e.tag == 0x00020010), None)
    ts = data[ts_elem.value:ts_elem.end].rstrip(b"\0 ").decode("ascii") if ts_elem else ""
    if ts == DEFLATED_LE:
        return DicomLayout(tuple(elems), ts, dataset_start)
    explicit = ts != IMPLICIT_LE if ts else data[off + 4:off + 6].isalpha()
    while off + 8 <= len(data):
        e = _read_elem(data, off, explicit)
        elems.append(e)
        off = e.end
    return DicomLayout(tuple(elems), ts, dataset_start)


def encode_elem(tag: int, vr: str, value: bytes, *, explicit: bool = True, length: int | None = None) -> bytes:
    """One data element's bytes (little endian); ``length`` overrides the length field (a lie when it differs)."""
    if len(value) % 2:
        value += b"\0" if vr in ("UI", "OB", "UN") else b" "
    n = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if not explicit:
        return head + struct.pack("<I", n) + value
    if vr.encode() in _LONG_VRS:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", n) + value
    return head + vr.encode() + struct.pack("<H", n & 0xFFFF) + value


def replace_value(data: bytes, layout: DicomLayout, tag: int, value: bytes, *, fix_group_length: bool = True) -> bytes:
    """``data`` with element ``tag`` re-encoded around ``value`` (length field updated; for a meta element the
    group length too, unless ``fix_group_length`` is False)."""
    e = layout[tag]
    new = encode_elem(tag, e.vr, value, explicit=e.explicit)
    out = data[:e.start] + new + data[e.end:]
    delta = len(new) - (e.end - e.start)
    if e.group == 2 and fix_group_length and delta:
        gl = layout.get(0x00020000)
        if gl is not None:
            out = patch(out, gl.value, struct.pack("<I", _u32(data, gl.value) + delta))
    return out


def insert_elem(data: bytes, layout: DicomLayout, elem: bytes, tag: int) -> bytes:
    """``data`` with the encoded element ``elem`` inserted where ``tag`` belongs in the data set's tag order."""
    after = next((e for e in layout.dataset if e.tag > tag), None)
    at = after.start if after is not None else len(data)
    return data[:at] + elem + data[at:]


def set_us(data: bytes, layout: DicomLayout, tag: int, value: int) -> bytes:
    """An US value patched in place (Rows, Columns, BitsAllocated...)."""
    return patch(data, layout[tag].value, struct.pack("<H", value & 0xFFFF))


def patch(data: bytes, off: int, new: bytes) -> bytes:
    return data[:off] + new + data[off + len(new):]


def xor_byte(data: bytes, off: int, mask: int) -> bytes:
    return data[:off] + bytes([data[off] ^ mask]) + data[off + 1:]


# --------------------------------------------------------------------------- codestreams


def j2k_siz(data: bytes, start: int) -> int:
    """Offset of the SIZ marker (FF51) of the J2K codestream at ``start`` (SOC FF4F first)."""
    if data[start:start + 4] != b"\xff\x4f\xff\x51":
        raise ValueError(f"no J2K SOC+SIZ at {start}")
    return start + 2


def j2k_marker(data: bytes, start: int, marker: int) -> int:
    """Offset of main-header marker ``marker`` (e.g. 0xFF52 COD) of the J2K codestream at ``start``."""
    off = start + 2
    while off + 4 <= len(data):
        m, length = struct.unpack_from(">HH", data, off)
        if m == marker:
            return off
        if m == 0xFF90:  # SOT: end of the main header
            break
        off += 2 + length
    raise ValueError(f"J2K marker {marker:04X} not found")


def jpeg_sof(data: bytes, start: int) -> int:
    """Offset of the SOF marker (FFC0-FFCF except C4/C8/CC, or FFF7 for JPEG-LS) of the JPEG stream at ``start``."""
    if data[start:start + 2] != b"\xff\xd8":
        raise ValueError(f"no JPEG SOI at {start}")
    off = start + 2
    while off + 4 <= len(data):
        if data[off] != 0xFF:
            raise ValueError(f"JPEG marker expected at {off}")
        m = data[off + 1]
        if (0xC0 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC)) or m == 0xF7:
            return off
        off += 2 + struct.unpack_from(">H", data, off + 2)[0]
    raise ValueError("no SOF marker")


# --------------------------------------------------------------------------- PNG


@dataclass(frozen=True, slots=True)
class Chunk:
    start: int
    type: bytes
    length: int

    @property
    def data(self) -> int:
        return self.start + 8

    @property
    def end(self) -> int:
        return self.start + 12 + self.length


def png_chunks(data: bytes) -> list[Chunk]:
    off, out = 8, []
    while off + 12 <= len(data):
        length = struct.unpack_from(">I", data, off)[0]
        out.append(Chunk(off, data[off + 4:off + 8], length))
        off += 12 + length
    return out


def png_chunk(ctype: bytes, payload: bytes, *, length: int | None = None, crc: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    c = zlib.crc32(ctype + payload) if crc is None else crc
    return struct.pack(">I", n) + ctype + payload + struct.pack(">I", c & 0xFFFFFFFF)


def png_fix_crc(data: bytes, chunk: Chunk) -> bytes:
    """``data`` with the CRC of ``chunk`` recomputed (so that only the edited field is wrong)."""
    crc = zlib.crc32(data[chunk.start + 4:chunk.data + chunk.length])
    return patch(data, chunk.data + chunk.length, struct.pack(">I", crc))


# --------------------------------------------------------------------------- bombs


def _zero_block(chunk: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(bytes(chunk)) + c.flush(zlib.Z_FULL_FLUSH)


def raw_deflate(prefix: bytes, zeros: int, suffix: bytes = b"", *, chunk: int = 1 << 20) -> bytes:
    """A raw deflate stream of ``prefix`` + ``zeros`` zero bytes + ``suffix``, built without holding the zeros:
    independently compressed segments, each ending on a full flush (byte aligned, no final bit), concatenate into
    one valid stream. ``zeros`` is rounded down to a multiple of ``chunk``."""
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    out += _zero_block(chunk) * (zeros // chunk)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    return out + tail.compress(suffix) + tail.flush()


def zlib_zeros(zeros: int, *, chunk: int = 1 << 20) -> bytes:
    """A zlib stream (RFC 1950) of ``zeros`` zero bytes (rounded down to ``chunk``)."""
    adler = 1
    block = bytes(chunk)
    for _ in range(zeros // chunk):
        adler = zlib.adler32(block, adler)
    return b"\x78\xda" + raw_deflate(b"", zeros, chunk=chunk) + struct.pack(">I", adler)


def gzip_of(prefix: bytes, zeros: int, *, chunk: int = 1 << 20) -> bytes:
    """A gzip member (RFC 1952, mtime 0) of ``prefix`` + ``zeros`` zero bytes (rounded down to ``chunk``)."""
    crc = zlib.crc32(prefix)
    block = bytes(chunk)
    n = zeros // chunk
    for _ in range(n):
        crc = zlib.crc32(block, crc)
    size = (len(prefix) + n * chunk) & 0xFFFFFFFF
    return (b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + raw_deflate(prefix, n * chunk, chunk=chunk)
            + struct.pack("<II", crc & 0xFFFFFFFF, size))
