"""Hostile and damaged inputs built in code from the recipes of issue 11 (small files, built in milliseconds)."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
from factories import make_cxr_dataset, save_encapsulated
from pydicom.encaps import generate_frames
from pydicom.uid import UID, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless

REPO = Path(__file__).resolve().parents[1]
RLE_SAMPLE = REPO / "sample_data" / "cxr_pa_rg1_half_rle.dcm"
PNG_SAMPLE = REPO / "sample_data" / "cxr_pa_rg1_quarter.png"


def corrupt_rle(dest: Path) -> Path:
    """Issue 11 row 1: byte 373011 of the RLE sample set to 0x84 (pylibjpeg-rle panics on it)."""
    data = bytearray(RLE_SAMPLE.read_bytes())
    data[373011] = 0x84
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(data))
    return dest


def rle_with_bits_allocated(dest: Path, bits: int = 33) -> Path:
    """Issue 11 row 3: the RLE sample with BitsAllocated 33 (GDCM aborts its process on it)."""
    import pydicom

    ds = pydicom.dcmread(RLE_SAMPLE)
    ds.BitsAllocated = bits
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def good_png(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PNG_SAMPLE, dest)
    return dest


def _pixels(n: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    return ((yy * 3 + xx * 2) % 256).astype(np.uint8)


def _encapsulated(dest: Path, frame: bytes, ts: UID, *, bits: int = 8) -> Path:
    return save_encapsulated(make_cxr_dataset(64, 64, pixels=_pixels(), bits_stored=bits), frame, ts, dest)


def j2k_claiming(dest: Path, side: int = 20000) -> Path:
    """Issue 11 row 5: a ~2 KB JPEG 2000 DICOM, 64x64 in its header, whose SIZ says ``side`` x ``side`` (one tile)."""
    ds = make_cxr_dataset(64, 64, pixels=_pixels(), bits_stored=8)
    ds.compress(JPEG2000Lossless)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    data = bytearray(dest.read_bytes())
    soc = data.index(b"\xff\x4f\xff\x51")
    struct.pack_into(">II", data, soc + 8, side, side)  # Xsiz, Ysiz
    struct.pack_into(">II", data, soc + 24, side, side)  # XTsiz, YTsiz: one tile, as the original
    dest.write_bytes(bytes(data))
    return dest


def _patch_sof(frame: bytes, markers: tuple[bytes, ...], side: int, new_marker: bytes | None = None) -> bytes:
    data = bytearray(frame)
    pos = next(data.index(m) for m in markers if m in data)
    struct.pack_into(">HH", data, pos + 5, side, side)  # after marker (2), length (2), precision (1)
    if new_marker is not None:
        data[pos:pos + 2] = new_marker
    return bytes(data)


def jpeg_claiming(dest: Path, side: int = 20000, *, lossless: bool = False) -> Path:
    """Issue 11 row 5: a small JPEG DICOM, 64x64 in its header, whose SOF says ``side`` x ``side``.

    ``lossless``: the SOF0 becomes an SOF3 (process 14) under the JPEG Lossless SV1 syntax; the stream is then
    not decodable, which does not matter: it must be refused on its SOF alone.
    """
    ok, enc = cv2.imencode(".jpg", _pixels())
    assert ok
    frame = _patch_sof(enc.tobytes(), (b"\xff\xc0",), side, b"\xff\xc3" if lossless else None)
    return _encapsulated(dest, frame, JPEGLosslessSV1 if lossless else JPEGBaseline8Bit)


def textured_u8(n: int = 256, seed: int = 0) -> np.ndarray:
    """A blurred noise image: its JPEG stream is long enough to damage in the middle of the entropy-coded data."""
    noise = (np.random.default_rng(seed).random((n, n)) * 255).astype(np.uint8)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 3), None, 0, 255, cv2.NORM_MINMAX)


def jpeg_damaged(dest: Path, how: str) -> Path:
    """A 256 x 256 baseline JPEG DICOM whose stream is ``how``: "cut" (at 60%, no EOI), "zeroed" (200 bytes in the
    middle of its scan set to 0: libjpeg warns "Corrupt JPEG data" and decodes on), "padded" (intact, four 00, one FF
    and 5000 00 after its EOI) or "intact"."""
    img = textured_u8()
    ok, enc = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    frame = bytearray(enc.tobytes())
    if how == "cut":
        frame = frame[: len(frame) * 6 // 10]
    elif how == "zeroed":
        mid = (frame.index(b"\xff\xda") + len(frame)) // 2
        frame[mid:mid + 200] = bytes(200)
    elif how == "padded":
        frame += b"\x00\x00\x00\x00\xff" + bytes(5000)
    else:
        assert how == "intact", how
    return save_encapsulated(make_cxr_dataset(256, 256, pixels=img, bits_stored=8), bytes(frame), JPEGBaseline8Bit,
                             dest)


def jpegls_cut(dest: Path) -> Path:
    """A 256 x 256 JPEG-LS DICOM whose stream stops at 60% (no EOI)."""
    ds = make_cxr_dataset(256, 256, pixels=textured_u8(), bits_stored=8)
    ds.compress(JPEGLSLossless)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    return save_encapsulated(ds, frame[: len(frame) * 6 // 10], JPEGLSLossless, dest)


def jpegls_claiming(dest: Path, side: int = 20000) -> Path:
    """Issue 11 row 5: a small JPEG-LS DICOM, 64x64 in its header, whose SOF55 says ``side`` x ``side``."""
    ds = make_cxr_dataset(64, 64, pixels=_pixels(), bits_stored=8)
    ds.compress(JPEGLSLossless)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    data = bytearray(dest.read_bytes())
    pos = data.index(b"\xff\xf7")
    struct.pack_into(">HH", data, pos + 5, side, side)
    dest.write_bytes(bytes(data))
    return dest


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def deflated_bomb(dest: Path, zeros: int = 1 << 30) -> Path:
    """Issue 11 row 6: a Deflated Explicit VR LE chest image with ``zeros`` bytes of zeros in a private OB element.

    The deflate stream is built by repeating one compressed block of 1 MiB of zeros (after a full flush each
    block compresses to the same bytes), so building a 1 GiB bomb costs ~1 MB and a few milliseconds.
    """
    ds = make_cxr_dataset(64, 64, pixels=_pixels(), bits_stored=8)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1.99")
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    raw = dest.read_bytes()
    body_start = 144 + struct.unpack("<I", raw[140:144])[0]  # preamble, DICM, (0002,0000) + the group it counts
    body = zlib.decompress(raw[body_start:], -zlib.MAX_WBITS)
    # The private element goes before the first element of group 0010 (tags ascend): (0009,0010) creator + (0009,1000)
    cut = next(i for i in range(0, len(body) - 4, 2) if body[i:i + 4] == b"\x10\x00\x10\x00")
    creator = _element(0x0009, 0x0010, b"LO", b"CXRTEST ")
    header = struct.pack("<HH2sHI", 0x0009, 0x1000, b"OB", 0, zeros)
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = 1 << 20
    parts = [z.compress(body[:cut] + creator + header), z.flush(zlib.Z_FULL_FLUSH)]
    block = z.compress(bytes(chunk)) + z.flush(zlib.Z_FULL_FLUSH)
    parts.append(block * (zeros // chunk))
    parts.append(z.compress(bytes(zeros % chunk) + body[cut:]))
    parts.append(z.flush())
    dest.write_bytes(raw[:body_start] + b"".join(parts))
    return dest


def deflated_pixel_bomb(dest: Path, zeros: int = 1 << 30, side: int = 64) -> Path:
    """Like `deflated_bomb`, but the ``zeros`` are the pixel data of a header that says ``side`` x ``side`` 8-bit.

    Found by tests/fuzz (``bombs/deflate-pixeldata-1gib``): 1 GiB of pixel data for a 64 x 64 image cost 3 GiB.
    """
    ds = make_cxr_dataset(64, 64, pixels=_pixels(), bits_stored=8)
    ds.Rows = ds.Columns = side
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.1.99")
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    raw = dest.read_bytes()
    body_start = 144 + struct.unpack("<I", raw[140:144])[0]
    body = zlib.decompress(raw[body_start:], -zlib.MAX_WBITS)
    cut = body.rindex(b"\xe0\x7f\x10\x00")  # (7FE0,0010) Pixel Data, the last element
    z = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    chunk = 1 << 20
    parts = [z.compress(body[:cut] + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, zeros)),
             z.flush(zlib.Z_FULL_FLUSH)]
    block = z.compress(bytes(chunk)) + z.flush(zlib.Z_FULL_FLUSH)
    parts.append(block * (zeros // chunk))
    parts.append(z.compress(bytes(zeros % chunk)))
    parts.append(z.flush())
    dest.write_bytes(raw[:body_start] + b"".join(parts))
    return dest


def tiff_duplicate_size(dest: Path, first: int = 30000, second: int = 100) -> Path:
    """Issue 11 row 7: an 8-bit grey TIFF whose IFD lists ImageWidth/ImageLength twice (``first``, then ``second``)."""
    pixels = bytes(second * second)
    entries = [(256, 3, 1, first), (257, 3, 1, first), (256, 3, 1, second), (257, 3, 1, second), (258, 3, 1, 8),
               (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 0), (277, 3, 1, 1), (278, 3, 1, second),
               (279, 4, 1, len(pixels))]
    ifd_at = 8
    data_at = ifd_at + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", len(entries)))
    for tag, typ, n, value in entries:
        if tag == 273:
            value = data_at
        out += struct.pack("<HHI", tag, typ, n) + (struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value))
    out += struct.pack("<I", 0) + pixels
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(out))
    return dest


def png_claiming(dest: Path, side: int = 16384) -> Path:
    """A valid small PNG whose IHDR is patched to ``side`` x ``side`` 8-bit grey (its CRC no longer matches)."""
    ok, enc = cv2.imencode(".png", _pixels())
    assert ok
    data = bytearray(enc.tobytes())
    struct.pack_into(">II", data, 16, side, side)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(bytes(data))
    return dest


def latin1_copy(folder: Path, src: Path = PNG_SAMPLE) -> Path:
    """Issue 11 row 2: a copy of a PNG named ``M\\xfcller.png`` in Latin-1 bytes (not valid UTF-8)."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    name = os.fsdecode(b"M\xfcller.png")
    dest = folder / name
    shutil.copyfile(src, dest)
    return dest


EXPECTED = {  # file name in hostile_folder -> a phrase of the reason it fails
    "a_bad_rle.dcm": "RLE Lossless decoder stopped on an internal error (PanicException",
    "b_ba33.dcm": "(0028,0100) BitsAllocated 33 is invalid",
    "c_j2k.dcm": "the JPEG 2000 codestream describes a different image (20000x20000",
    "d_jpeg.dcm": "the JPEG codestream describes a different image (20000x20000",
    "e_jls.dcm": "the JPEG-LS codestream describes a different image (20000x20000",
    "f_bomb.dcm": "element (0009,1000) alone announces 1024 MiB",
    "g_dup.tif": "ImageWidth (256) appears twice",
    "h_big.png": "GiB of memory (16384x16384",
}


def hostile_folder(root: Path) -> Path:
    """Every hostile file of issue 11 that the decode stage must fail, and two good files."""
    corrupt_rle(root / "a_bad_rle.dcm")
    rle_with_bits_allocated(root / "b_ba33.dcm")
    j2k_claiming(root / "c_j2k.dcm")
    jpeg_claiming(root / "d_jpeg.dcm")
    jpegls_claiming(root / "e_jls.dcm")
    deflated_bomb(root / "f_bomb.dcm")
    tiff_duplicate_size(root / "g_dup.tif")
    png_claiming(root / "h_big.png")
    good_png(root / "y_good.png")
    j2k_claiming(root / "z_good_j2k.dcm", side=64)
    return root
