"""A deterministic corpus of damaged and hostile inputs for ``cxrtriage predict``, made from ``sample_data/`` in code.

``build_corpus(dest, count=..., seed=...)`` writes ``count`` files (plus two control files per family folder)
under ``dest/<family>/`` and ``dest/corpus.json``, which names every file's base and mutation precisely enough
to redo it by hand. The same ``count`` and ``seed`` give byte-identical files with the same versions of pydicom,
the codecs and OpenCV (the bases are encoded in code).

Families (folder names):

- ``pristine``: the bases unmodified (small DICOM in explicit/implicit/deflated/RLE/J2K/JPEG-LS/JPEG lossless/
  JPEG baseline, bare DICOM, PNG 8/16-bit, JPEG, TIFF, NIfTI, NIfTI.gz, MHA, NRRD; the real sample files);
- ``dicom-tags``: structure-aware edits of Rows/Columns/BitsAllocated/BitsStored/HighBit/PixelRepresentation/
  SamplesPerPixel/PhotometricInterpretation/NumberOfFrames/TransferSyntaxUID, header/pixel mismatches;
- ``dicom-framing``: truncations at structural points, huge or wrong VR lengths, encapsulated item lengths,
  duplicated/inserted/reordered elements and fragments, missing delimiters;
- ``codestream``: JPEG 2000 SIZ/COD, JPEG SOF0/SOF3, JPEG-LS SOF55, RLE header offsets and segment counts;
- ``raster``: PNG IHDR/chunk lengths/CRCs/duplicated chunks, JPEG SOF, TIFF IFDs, NIfTI/MHA/NRRD headers;
- ``metadata``: hostile values (NUL bytes, very long strings, formula characters, ``..`` in UIDs, bad dates and
  names, broken character sets, non-finite numbers, deep sequences, a detached NRRD data file outside the folder);
- ``names``: hostile file names (formula characters, Latin-1 bytes, 244 characters, newline, quotes) and
  special entries (dangling and looping links, a FIFO);
- ``bombs``: tiny files announcing huge images (J2K SIZ, JPEG SOF, JPEG-LS, RLE, PNG, TIFF duplicate tags,
  NIfTI, MHA, NRRD) and deflated DICOM with 1 GiB of zeros in a private element or in the pixel data;
- ``random``: seeded byte/bit flips at random and at structure-aware offsets, truncations, duplications,
  insertions and deletions of every base (as many as ``count`` leaves after the catalogue above).

The issue 11 recipes (rows 1, 2, 3, 5, 6, 7, 9, 11, 12, 14, 16) are always included; ``corpus.json`` names them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import random
import struct
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from fuzz_bytes import (
    DEFLATED_LE,
    PIXEL_DATA,
    UNDEFINED,
    DicomLayout,
    dicom_layout,
    encode_elem,
    gzip_of,
    insert_elem,
    j2k_marker,
    j2k_siz,
    jpeg_sof,
    patch,
    png_chunk,
    png_chunks,
    png_fix_crc,
    raw_deflate,
    replace_value,
    set_us,
    xor_byte,
    zlib_zeros,
)
from pydicom import config as dicom_config
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO / "sample_data"
CORPUS_JSON = "corpus.json"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"

# Tags of the image pixel module (and friends) that the structure-aware edits target.
ROWS, COLUMNS = 0x00280010, 0x00280011
BITS_ALLOCATED, BITS_STORED, HIGH_BIT, PIXEL_REP = 0x00280100, 0x00280101, 0x00280102, 0x00280103
SAMPLES, PHOTOMETRIC, NUMBER_OF_FRAMES = 0x00280002, 0x00280004, 0x00280008
TRANSFER_SYNTAX, META_LENGTH = 0x00020010, 0x00020000
PATIENT_NAME = 0x00100010
PIXEL_MODULE = (SAMPLES, PHOTOMETRIC, ROWS, COLUMNS, BITS_ALLOCATED, BITS_STORED, HIGH_BIT, PIXEL_REP)

FAMILIES = ("pristine", "dicom-tags", "dicom-framing", "codestream", "raster", "metadata", "names", "bombs", "random")


@dataclass(frozen=True, slots=True)
class Mutant:
    """One corpus entry. ``name`` is the file name in the family folder (for a name that is not valid UTF-8,
    ``raw_name`` holds the exact bytes and ``name`` a readable stand-in)."""

    family: str
    name: str
    base: str
    mutation: str
    data: bytes = b""
    kind: str = "file"  # file | symlink | fifo
    target: str = ""  # symlink target (relative)
    raw_name: bytes | None = None
    recipe: str = ""  # the issue 11 row it reproduces, e.g. "11/1"
    expect: str = ""  # for controls: the status a correct run gives it

    @property
    def fs_name(self) -> str:
        """The file name as Python's os functions spell it (surrogate escapes for undecodable bytes)."""
        return os.fsdecode(self.raw_name) if self.raw_name is not None else self.name

    @property
    def relpath(self) -> str:
        return f"{self.family}/{self.fs_name}"

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {"path": ascii(self.relpath)[1:-1], "family": self.family, "base": self.base,
                                "mutation": self.mutation, "kind": self.kind}
        if self.kind == "file":
            d.update(size=len(self.data), sha256=hashlib.sha256(self.data).hexdigest())
        if self.target:
            d["target"] = self.target
        if self.recipe:
            d["recipe"] = self.recipe
        if self.expect:
            d["expect"] = self.expect
        return d


# --------------------------------------------------------------------------- bases


def _dicom_bytes(ds: Dataset, *, implicit: bool = False) -> bytes:
    buf = io.BytesIO()
    with dicom_config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _grey8(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    return np.round((arr.astype(np.float64) - lo) * 255.0 / max(hi - lo, 1.0)).astype(np.uint8)


def tiff_bytes(pixels: np.ndarray, entries: list[tuple[int, int, int]] | None = None) -> bytes:
    """A classic little-endian TIFF, one uncompressed strip, built by hand so that its IFD can lie.

    ``entries`` replaces the IFD's (tag, type, value) list, written in the order given (duplicates allowed);
    -1 as a value means "the offset of the pixel data" (StripOffsets), -2 "its byte count".
    """
    rows, cols = pixels.shape
    bits = pixels.dtype.itemsize * 8
    if entries is None:
        entries = [(256, 4, cols), (257, 4, rows), (258, 3, bits), (259, 3, 1), (262, 3, 1), (273, 4, -1),
                   (277, 3, 1), (278, 4, rows), (279, 4, -2)]
    data_off = 8 + 2 + 12 * len(entries) + 4
    payload = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ifd = struct.pack("<H", len(entries))
    for tag, typ, value in entries:
        v = data_off if value == -1 else len(payload) if value == -2 else value
        packed = struct.pack("<HH", v & 0xFFFF, 0) if typ == 3 else struct.pack("<I", v & 0xFFFFFFFF)
        ifd += struct.pack("<HHI", tag, typ, 1) + packed
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + payload


def nifti_bytes(pixels: np.ndarray, *, dim: Sequence[int] | None = None, datatype: int | None = None,
                bitpix: int | None = None, pixdim: Sequence[float] = (1.0, 0.2, 0.2, 1, 1, 1, 1, 1),
                vox_offset: float = 352.0, scl_slope: float = 1.0, scl_inter: float = 0.0, magic: bytes = b"n+1\0",
                sizeof_hdr: int = 348) -> bytes:
    """A single-file NIfTI-1 image (348-byte header, 4-byte extension flag, voxels at 352), built by hand; the
    keyword arguments override header fields (they may lie about the voxels)."""
    rows, cols = pixels.shape
    h = bytearray(348)
    struct.pack_into("<i", h, 0, sizeof_hdr)
    struct.pack_into("<8h", h, 40, *(dim or (2, cols, rows, 1, 1, 1, 1, 1)))
    code = {np.dtype(np.uint8): 2, np.dtype(np.int16): 4, np.dtype(np.uint16): 512}[pixels.dtype]
    struct.pack_into("<hh", h, 70, code if datatype is None else datatype,
                     pixels.dtype.itemsize * 8 if bitpix is None else bitpix)
    struct.pack_into("<8f", h, 76, *pixdim)
    struct.pack_into("<fff", h, 108, vox_offset, scl_slope, scl_inter)
    h[123] = 2  # xyzt_units: mm
    h[148:148 + 11] = b"fuzz corpus"
    h[344:348] = magic
    return bytes(h) + b"\0\0\0\0" + pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()


def mha_bytes(pixels: np.ndarray, *, header: dict[str, str] | None = None, data: bytes | None = None) -> bytes:
    rows, cols = pixels.shape
    h = {"ObjectType": "Image", "NDims": "2", "BinaryData": "True", "BinaryDataByteOrderMSB": "False",
         "CompressedData": "False", "ElementSpacing": "0.2 0.2", "DimSize": f"{cols} {rows}",
         "ElementType": "MET_USHORT" if pixels.dtype == np.uint16 else "MET_UCHAR"}
    h.update(header or {})
    h["ElementDataFile"] = h.pop("ElementDataFile", "LOCAL")  # must be the last line
    text = "".join(f"{k} = {v}\n" for k, v in h.items())
    return text.encode() + (pixels.astype(pixels.dtype.newbyteorder("<")).tobytes() if data is None else data)


def nrrd_bytes(pixels: np.ndarray, *, header: dict[str, str] | None = None, data: bytes | None = None) -> bytes:
    rows, cols = pixels.shape
    h = {"type": "uint16" if pixels.dtype == np.uint16 else "uint8", "dimension": "2", "sizes": f"{cols} {rows}",
         "encoding": "raw", "endian": "little", "spacings": "0.2 0.2"}
    h.update(header or {})
    text = "NRRD0004\n" + "".join(f"{k}: {v}\n" for k, v in h.items()) + "\n"
    return text.encode() + (pixels.astype(pixels.dtype.newbyteorder("<")).tobytes() if data is None else data)


@dataclass
class Bases:
    """The files every mutation starts from: the real samples, and small (123 x 115) versions of the RG1 pixels
    encoded in code in every transfer syntax and raster format the reader supports (small = fast to decode)."""

    sample_dir: Path = SAMPLE_DATA
    _skipped: list[str] = field(default_factory=list)

    def sample(self, name: str) -> bytes:
        return (self.sample_dir / name).read_bytes()

    @cached_property
    def full(self) -> dict[str, bytes]:
        names = {"full-explicit": "cxr_pa_rg1_half_explicit.dcm", "full-rle": "cxr_pa_rg1_half_rle.dcm",
                 "full-j2k": "cxr_pa_rg1_j2k_lossless.dcm", "full-lateral": "cxr_retagged_lateral_rg1_quarter.dcm",
                 "full-sr": "report_basic_text_sr.dcm", "full-png": "cxr_pa_rg1_quarter.png"}
        return {k: self.sample(v) for k, v in names.items()}

    @cached_property
    def pixels(self) -> np.ndarray:
        ds = pydicom.dcmread(io.BytesIO(self.full["full-explicit"]))
        return np.ascontiguousarray(ds.pixel_array[::8, ::8]).astype(np.uint16)  # 123 x 115, 15 bits stored

    @property
    def pixels8(self) -> np.ndarray:
        return _grey8(self.pixels)

    def small_ds(self, pixels: np.ndarray | None = None) -> Dataset:
        """The explicit sample's header around small native pixels (a CR CHEST PA that is scored)."""
        arr = self.pixels if pixels is None else pixels
        ds = pydicom.dcmread(io.BytesIO(self.full["full-explicit"]))
        ds.Rows, ds.Columns = arr.shape
        if arr.dtype == np.uint8:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            del ds.WindowCenter, ds.WindowWidth
        ds.PixelData = arr.tobytes()
        ds["PixelData"].VR = "OB" if arr.dtype == np.uint8 else "OW"
        del ds.DataSetTrailingPadding
        return ds

    def _compressed(self, ts: UID, pixels: np.ndarray | None = None) -> bytes:
        ds = self.small_ds(pixels)
        arr = self.pixels if pixels is None else pixels
        ds.compress(ts, arr, encoding_plugin="pylibjpeg" if ts == JPEG2000Lossless else "", generate_instance_uid=False)
        return _dicom_bytes(ds)

    def rle_of(self, pixels: np.ndarray) -> bytes:
        """An RLE Lossless CR chest image of ``pixels`` (16-bit), the explicit sample's header around it."""
        return self._compressed(RLELossless, np.ascontiguousarray(pixels))

    def _jpeg_baseline(self, pixels8: np.ndarray) -> bytes:
        ok, jpg = cv2.imencode(".jpg", pixels8, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        ds = self.small_ds(pixels8)
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelData = encapsulate([jpg.tobytes()])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        return _dicom_bytes(ds)

    def _jpeg_lossless(self, pixels: np.ndarray) -> bytes | None:
        """JPEG lossless SV1 (process 14) through GDCM, the only encoder for it at hand (None when it fails)."""
        try:
            import gdcm
        except ImportError:
            return None
        with tempfile.TemporaryDirectory(prefix="cxr-fuzz-") as tmp:
            src, dst = Path(tmp) / "in.dcm", Path(tmp) / "out.dcm"
            src.write_bytes(_dicom_bytes(self.small_ds(pixels)))
            reader = gdcm.ImageReader()
            reader.SetFileName(str(src))
            if not reader.Read():
                return None
            change = gdcm.ImageChangeTransferSyntax()
            change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
            change.SetInput(reader.GetImage())
            if not change.Change():
                return None
            writer = gdcm.ImageWriter()
            writer.SetFileName(str(dst))
            writer.SetFile(reader.GetFile())
            writer.SetImage(change.GetOutput())
            if not writer.Write():
                return None
            return dst.read_bytes()

    @cached_property
    def small(self) -> dict[str, bytes]:
        """name -> bytes of every small base (DICOM first)."""
        px, px8 = self.pixels, self.pixels8
        out: dict[str, bytes] = {}
        out["explicit"] = _dicom_bytes(self.small_ds())
        out["implicit"] = _dicom_bytes(self.small_ds(), implicit=True)
        deflated = self.small_ds()
        deflated.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        out["deflate"] = _dicom_bytes(deflated)
        lay = dicom_layout(out["explicit"])
        out["bare"] = out["explicit"][lay.dataset_start:]  # no preamble, no file meta
        out["rle"] = self._compressed(RLELossless)
        out["j2k"] = self._compressed(JPEG2000Lossless)
        out["jls"] = self._compressed(JPEGLSLossless)
        out["jpeg8"] = self._jpeg_baseline(px8)
        jll = self._jpeg_lossless(px)
        if jll is not None:
            out["jpegll"] = jll
        else:
            self._skipped.append("jpegll (GDCM could not encode JPEG lossless)")
        out["png8"] = bytes(cv2.imencode(".png", px8)[1])
        out["png16"] = bytes(cv2.imencode(".png", px)[1])
        out["jpg"] = bytes(cv2.imencode(".jpg", px8, [cv2.IMWRITE_JPEG_QUALITY, 90])[1])
        out["tiff"] = tiff_bytes(px)
        out["nii"] = nifti_bytes(px)
        out["niigz"] = gzip.compress(nifti_bytes(px), mtime=0)
        out["mha"] = mha_bytes(px)
        out["nrrd"] = nrrd_bytes(px)
        return out

    @cached_property
    def tiny(self) -> dict[str, bytes]:
        """64 x 64 compressed DICOM (the bombs patch their codestreams to announce 20000 x 20000)."""
        px = np.ascontiguousarray(self.pixels[:64, :64])
        out = {"j2k": self._compressed(JPEG2000Lossless, px), "jls": self._compressed(JPEGLSLossless, px),
               "rle": self._compressed(RLELossless, px), "jpeg8": self._jpeg_baseline(_grey8(px))}
        jll = self._jpeg_lossless(px)
        if jll is not None:
            out["jpegll"] = jll
        return out

    def layout(self, name: str) -> DicomLayout:
        return dicom_layout(self.get(name))

    def get(self, name: str) -> bytes:
        return self.full[name] if name.startswith("full-") else self.small[name]

    def dicom_names(self, *, deflate: bool = False) -> list[str]:
        names = ["explicit", "implicit", "rle", "j2k", "jls", "jpeg8", "jpegll", "bare"]
        if deflate:
            names.append("deflate")
        return [n for n in names if n in self.small]


EXT = {"png8": "png", "png16": "png", "full-png": "png", "jpg": "jpg", "tiff": "tif", "nii": "nii",
       "niigz": "nii.gz", "mha": "mha", "nrrd": "nrrd"}


def ext(base: str) -> str:
    return EXT.get(base, "dcm")


# --------------------------------------------------------------------------- the catalogue


class Catalogue:
    """The structured mutations, family by family; ``random_mutants`` the seeded ones."""

    def __init__(self, bases: Bases, seed: int) -> None:
        self.b = bases
        self.seed = seed
        self.rng = random.Random(f"cxrtriage-fuzz:{seed}")

    def m(self, family: str, base: str, slug: str, mutation: str, data: bytes, **kw: object) -> Mutant:
        return Mutant(family, f"{base}-{slug}.{ext(base)}", base, mutation, data, **kw)  # type: ignore[arg-type]

    # ---- pristine
    def pristine(self) -> Iterator[Mutant]:
        expect = {"full-lateral": "excluded", "full-sr": "excluded"}
        for name, data in [*self.b.full.items(), *self.b.small.items()]:
            yield self.m("pristine", name, "pristine", "unmodified base", data, expect=expect.get(name, "scored"))

    # ---- dicom-tags
    def dicom_tags(self) -> Iterator[Mutant]:
        f = "dicom-tags"
        for base in self.b.dicom_names():
            data, lay = self.b.get(base), self.b.layout(base)
            rows, cols = 123, 115
            us_edits: list[tuple[str, int, int]] = [
                ("rows-0", ROWS, 0), ("rows-plus1", ROWS, rows + 1), ("rows-minus1", ROWS, rows - 1),
                ("rows-65535", ROWS, 65535), ("cols-double", COLUMNS, cols * 2), ("cols-1", COLUMNS, 1),
                ("bitsalloc-0", BITS_ALLOCATED, 0), ("bitsalloc-1", BITS_ALLOCATED, 1),
                ("bitsalloc-8", BITS_ALLOCATED, 8), ("bitsalloc-12", BITS_ALLOCATED, 12),
                ("bitsalloc-33", BITS_ALLOCATED, 33), ("bitsalloc-64", BITS_ALLOCATED, 64),
                ("bitsstored-0", BITS_STORED, 0), ("bitsstored-40", BITS_STORED, 40), ("highbit-31", HIGH_BIT, 31),
                ("pixelrep-1", PIXEL_REP, 1), ("pixelrep-2", PIXEL_REP, 2), ("samples-3", SAMPLES, 3),
                ("samples-0", SAMPLES, 0),
            ]
            if base not in ("explicit", "rle", "j2k"):  # the other bases get a smaller share
                us_edits = [e for e in us_edits if e[0] in ("rows-plus1", "cols-double", "bitsalloc-1", "bitsalloc-33",
                                                           "bitsstored-0", "pixelrep-1", "samples-3")]
            if base == "jpeg8":
                us_edits.append(("bitsalloc-16", BITS_ALLOCATED, 16))
            for slug, tag, value in us_edits:
                if lay.get(tag) is None:
                    continue
                yield self.m(f, base, slug, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) set to {value} (raw edit)",
                             set_us(data, lay, tag, value))
            pis = ["RGB", "PALETTE COLOR", "YBR_FULL_422", "MONOCHROME3", ""] if base in ("explicit", "j2k") else ["RGB", ""]
            for pi in pis:
                yield self.m(f, base, f"photometric-{pi.replace(' ', '_') or 'empty'}",
                             f"PhotometricInterpretation set to {pi!r}",
                             replace_value(data, lay, PHOTOMETRIC, pi.encode()))
            if lay.get(TRANSFER_SYNTAX) is not None:
                swaps: dict[str, list[str]] = {"explicit": [RLELossless, JPEG2000Lossless, ImplicitVRLittleEndian, DEFLATED_LE],
                         "rle": [ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless],
                         "j2k": [JPEGLSLossless, RLELossless, JPEGBaseline8Bit, "1.2.840.10008.1.2.4.91"],
                         "jls": [JPEG2000Lossless, JPEG_LOSSLESS_SV1], "jpeg8": [JPEGLSLossless, RLELossless],
                         "jpegll": [JPEGBaseline8Bit, JPEGLSLossless], "implicit": [ExplicitVRLittleEndian]}
                for ts in [*swaps.get(base, []), "1.2.3.4.5.6.7.8.9", "", "1.2.840.10008.1.2.2"]:
                    yield self.m(f, base, f"ts-{ts or 'empty'}", f"TransferSyntaxUID replaced by {ts!r} (raw edit)",
                                 replace_value(data, lay, TRANSFER_SYNTAX, str(ts).encode()))
            frames_vr = "IS"
            for n in ("2", "0", "-1", "abc", "99999999"):
                elem = encode_elem(NUMBER_OF_FRAMES, frames_vr, n.encode(), explicit=lay.dataset[0].explicit)
                yield self.m(f, base, f"frames-{n}", f"NumberOfFrames {n!r} inserted",
                             insert_elem(data, lay, elem, NUMBER_OF_FRAMES))
        # header/pixel mismatches on the real samples
        rle, lay = self.b.full["full-rle"], self.b.layout("full-rle")
        yield self.m(f, "full-rle", "bitsalloc-33", "BitsAllocated 33 on the RLE sample (issue 11 row 3)",
                     set_us(rle, lay, BITS_ALLOCATED, 33), recipe="11/3")
        yield self.m(f, "full-rle", "bitsalloc-8", "BitsAllocated 8 on the RLE sample (2 segments for 1 expected)",
                     set_us(rle, lay, BITS_ALLOCATED, 8))
        exp, lay = self.b.full["full-explicit"], self.b.layout("full-explicit")
        yield self.m(f, "full-explicit", "rows-double", "Rows doubled: pixel data half as long as announced",
                     set_us(exp, lay, ROWS, 977 * 2))
        j2k, lay = self.b.full["full-j2k"], self.b.layout("full-j2k")
        yield self.m(f, "full-j2k", "rows-half", "Rows halved on the J2K sample: the codestream is twice as high",
                     set_us(j2k, lay, ROWS, 1841 // 2))
        # the same edits written by pydicom (valid framing) on the deflated base
        deflated_edits: list[tuple[str, dict[str, object]]] = [
            ("rows-plus1", {"Rows": 124}), ("bitsalloc-33", {"BitsAllocated": 33}),
            ("photometric-RGB", {"PhotometricInterpretation": "RGB"}), ("frames-2", {"NumberOfFrames": 2})]
        for slug, attrs in deflated_edits:
            ds = self.b.small_ds()
            ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
            for k, v in attrs.items():
                setattr(ds, k, v)
            yield self.m(f, "deflate", slug, f"{attrs} written by pydicom", _dicom_bytes(ds))

    # ---- dicom-framing
    def dicom_framing(self) -> Iterator[Mutant]:
        f = "dicom-framing"
        for base in self.b.dicom_names(deflate=True):
            data, lay = self.b.get(base), self.b.layout(base)
            cuts: dict[str, int] = {"empty": 0, "1byte": 1, "in-preamble": 100, "after-DICM": 132}
            if lay.meta:
                cuts["mid-meta"] = lay.meta[len(lay.meta) // 2].start + 3
            cuts["after-meta"] = lay.dataset_start
            px = lay.get(PIXEL_DATA)
            if px is not None:
                cuts.update({"mid-rows-header": lay[ROWS].start + 5, "mid-pixel-header": px.start + 6,
                             "pixel-value-start": px.value, "pixel-half": px.value + (min(px.length, px.end - px.value)) // 2,
                             "last-byte": len(data) - 1})
                for i, item in enumerate(px.items[:2]):
                    cuts[f"item{i}-mid-header"] = item.start + 5
                    cuts[f"item{i}-value+2"] = item.value + 2
                if px.items:
                    cuts["no-seq-delimiter"] = px.end - 8
            elif base == "deflate":
                cuts.update({"deflate-start": lay.dataset_start + 2, "deflate-half": (lay.dataset_start + len(data)) // 2,
                             "last-byte": len(data) - 1})
            if base != "explicit":  # the explicit base gets every cut, the others a share
                cuts = {k: v for k, v in cuts.items() if k in ("empty", "after-DICM", "after-meta", "pixel-half",
                                                              "item1-value+2", "no-seq-delimiter", "deflate-half")}
            for slug, at in cuts.items():
                if 0 <= at < len(data) and not (at > 0 and base == "bare" and at < 132):
                    yield self.m(f, base, f"cut-{slug}", f"truncated to {at} of {len(data)} bytes", data[:at])
            if base == "deflate":
                continue
            explicit = lay.dataset[0].explicit
            # lengths that lie
            pn = lay.get(PATIENT_NAME)
            if pn is not None:
                huge = b"\xff\xff" if pn.len_size == 2 else b"\xfe\xff\xff\xff"
                yield self.m(f, base, "patientname-len-max", f"PatientName length field set to {huge.hex()}",
                             patch(data, pn.len_off, huge))
                yield self.m(f, base, "patientname-len-odd", "PatientName length field +1 (odd)",
                             patch(data, pn.len_off, struct.pack("<H" if pn.len_size == 2 else "<I", pn.length + 1)))
            if px is not None and not px.items:
                for slug, n in [("pixel-len-huge", 0xFFFFFFF0), ("pixel-len-minus1", px.length - 1),
                                ("pixel-len-undefined", UNDEFINED), ("pixel-len-double", px.length * 2)]:
                    yield self.m(f, base, slug, f"PixelData length field set to {n:#x}", patch(data, px.len_off,
                                                                                               struct.pack("<I", n)))
            if px is not None and px.items:
                bot, frag = px.items[0], px.items[1]
                edits = [("bot-len-huge", bot.start + 4, 0xFFFFFFF0), ("bot-len-odd", bot.start + 4, 3),
                         ("frag-len-huge", frag.start + 4, 0x7FFFFFFF), ("frag-len-plus2", frag.start + 4, frag.length + 2),
                         ("frag-len-minus2", frag.start + 4, frag.length - 2), ("frag-len-0", frag.start + 4, 0),
                         ("frag-len-undefined", frag.start + 4, UNDEFINED)]
                for slug, off, n in edits:
                    yield self.m(f, base, slug, f"encapsulated item length at {off} set to {n:#x}",
                                 patch(data, off, struct.pack("<I", n)))
                yield self.m(f, base, "item-tag-broken", f"first fragment's item tag at {frag.start} zeroed",
                             patch(data, frag.start, b"\0\0\0\0"))
                dup = data[frag.start:frag.end]
                yield self.m(f, base, "frag-duplicated", "first fragment duplicated", data[:frag.end] + dup + data[frag.end:])
                empty = struct.pack("<HHI", 0xFFFE, 0xE000, 0)
                yield self.m(f, base, "frag-empty-inserted", "empty fragment inserted before the first",
                             data[:frag.start] + empty + data[frag.start:])
                half = frag.length // 2 & ~1
                split = (struct.pack("<HHI", 0xFFFE, 0xE000, half) + data[frag.value:frag.value + half]
                         + struct.pack("<HHI", 0xFFFE, 0xE000, frag.length - half) + data[frag.value + half:frag.end])
                yield self.m(f, base, "frag-split", "first fragment split in two items at its middle",
                             data[:frag.start] + split + data[frag.end:])
                yield self.m(f, base, "pixel-native-len", "encapsulated PixelData given a defined length (native framing)",
                             patch(data, px.len_off, struct.pack("<I", px.end - px.value)))
            if base not in ("explicit", "rle", "j2k", "implicit"):
                continue
            rows_e = lay[ROWS]
            yield self.m(f, base, "rows-duplicated", "Rows element written twice", data[:rows_e.end]
                         + data[rows_e.start:rows_e.end] + data[rows_e.end:])
            yield self.m(f, base, "garbage-inserted", "16 random bytes inserted before Rows",
                         data[:rows_e.start] + self.rng.randbytes(16) + data[rows_e.start:])
            late = encode_elem(0x00080005, "CS", b"ISO_IR 100", explicit=explicit)
            yield self.m(f, base, "out-of-order", "SpecificCharacterSet appended after PixelData (tag order broken)",
                         data + late)
            if px is not None:
                yield self.m(f, base, "pixel-duplicated", "PixelData element appended a second time",
                             data + data[px.start:px.end])
                yield self.m(f, base, "pixel-removed", "PixelData element removed", data[:px.start] + data[px.end:])
            if lay.meta:
                gl = lay[META_LENGTH]
                for n in (0, 4, 0xFFFFFFF0):
                    yield self.m(f, base, f"meta-len-{n:x}", f"FileMetaInformationGroupLength set to {n}",
                                 patch(data, gl.value, struct.pack("<I", n)))
                yield self.m(f, base, "dicm-twice", "the preamble and DICM marker repeated after the file meta",
                             data[:lay.dataset_start] + data[:132] + data[lay.dataset_start:])
            if explicit:
                yield self.m(f, base, "vr-garbage", "VR of Rows replaced by 'ZZ'", patch(data, rows_e.start + 4, b"ZZ"))
                yield self.m(f, base, "vr-un-huge", "VR of Rows replaced by UN with a huge 4-byte length",
                             data[:rows_e.start] + data[rows_e.start:rows_e.start + 4] + b"UN\0\0"
                             + struct.pack("<I", 0xFFFFFF00) + data[rows_e.value:])
                sq = encode_elem(0x00089215, "SQ", b"", explicit=True, length=UNDEFINED)  # never closed
                yield self.m(f, base, "sq-unterminated", "an undefined-length sequence that is never closed",
                             insert_elem(data, lay, sq, 0x00089215))
        # huge VR length on the real samples
        for base in ("full-explicit", "full-rle"):
            data, lay = self.b.full[base], self.b.layout(base)
            px = lay[PIXEL_DATA]
            n = 0xFFFFFFF0 if not px.items else 0x7FFFFFF0
            off = px.len_off if not px.items else px.items[1].start + 4
            yield self.m(f, base, "len-huge", f"length at {off} set to {n:#x}", patch(data, off, struct.pack("<I", n)))
            yield self.m(f, base, "cut-pixel-90pct", "truncated at 90% of the pixel data",
                         data[:px.value + (px.end - px.value) * 9 // 10])

    # ---- codestream
    def codestream(self) -> Iterator[Mutant]:
        f = "codestream"
        for base in ("j2k", "full-j2k"):
            data, lay = self.b.get(base), self.b.layout(base)
            start = lay.fragments[0].value
            siz = j2k_siz(data, start)
            x, y = struct.unpack_from(">II", data, siz + 6)
            edits: list[tuple[str, int, bytes]] = [
                ("siz-xy-double", siz + 6, struct.pack(">II", x * 2, y * 2)),
                ("siz-xy-0", siz + 6, struct.pack(">II", 0, 0)),
                ("siz-xy-swapped", siz + 6, struct.pack(">II", y, x)),
                ("siz-origin-past-size", siz + 14, struct.pack(">II", x + 10, y + 10)),
                ("siz-tile-0", siz + 22, struct.pack(">II", 0, 0)),
                ("siz-tile-1", siz + 22, struct.pack(">II", 1, 1)),
                ("siz-csiz-0", siz + 38, struct.pack(">H", 0)),
                ("siz-csiz-3", siz + 38, struct.pack(">H", 3)),
                ("siz-csiz-16384", siz + 38, struct.pack(">H", 16384)),
                ("siz-depth-38", siz + 40, bytes([37])),
                ("siz-signed", siz + 40, bytes([0x80 | data[siz + 40]])),
                ("siz-subsampling-0", siz + 41, b"\0\0"),
                ("siz-lsiz-wrong", siz + 2, struct.pack(">H", 0xFFFF)),
            ]
            if base == "full-j2k":
                edits = [e for e in edits if e[0] in ("siz-xy-double", "siz-tile-1", "siz-csiz-3", "siz-depth-38")]
            for slug, off, new in edits:
                yield self.m(f, base, slug, f"J2K SIZ bytes at {off} set to {new.hex()}", patch(data, off, new))
            try:
                cod = j2k_marker(data, start, 0xFF52)
            except ValueError:
                continue
            for slug, off, new in [("cod-levels-32", cod + 9, bytes([32])), ("cod-layers-0", cod + 6, b"\0\0"),
                                   ("cod-codeblock-huge", cod + 10, b"\x0f\x0f"), ("cod-transform-9", cod + 13, bytes([9]))]:
                if base == "j2k":
                    yield self.m(f, base, slug, f"J2K COD bytes at {off} set to {new.hex()}", patch(data, off, new))
        jpeg_bases = [b for b in ("jls", "jpegll", "jpeg8") if b in self.b.small]
        for base in jpeg_bases:
            data, lay = self.b.get(base), self.b.layout(base)
            sof = jpeg_sof(data, lay.fragments[0].value)
            p, y, x = data[sof + 4], *struct.unpack_from(">HH", data, sof + 5)
            for slug, off, new in [("sof-y-0", sof + 5, b"\0\0"), ("sof-xy-double", sof + 5, struct.pack(">HH", y * 2, x * 2)),
                                   ("sof-xy-65535", sof + 5, b"\xff\xff\xff\xff"), ("sof-precision-0", sof + 4, b"\0"),
                                   ("sof-precision-17", sof + 4, bytes([17])), ("sof-precision-1", sof + 4, b"\1"),
                                   ("sof-components-3", sof + 9, b"\3"), ("sof-components-0", sof + 9, b"\0"),
                                   ("sof-len-0", sof + 2, b"\0\0")]:
                yield self.m(f, base, slug, f"SOF {data[sof + 1]:02X} (precision {p}, {x}x{y}) bytes at {off} set to "
                             f"{new.hex()}", patch(data, off, new))
        for base in ("rle", "full-rle"):
            data, lay = self.b.get(base), self.b.layout(base)
            frag = lay.fragments[0]
            h = frag.value
            nseg, off1, off2 = struct.unpack_from("<III", data, h)
            edits2 = [("rle-segments-0", h, 0), ("rle-segments-1", h, 1), ("rle-segments-3", h, 3),
                      ("rle-segments-15", h, 15), ("rle-segments-16", h, 16), ("rle-segments-huge", h, 0xFFFFFFFF),
                      ("rle-offset1-0", h + 4, 0), ("rle-offset1-past-end", h + 4, frag.length + 100),
                      ("rle-offset2-0", h + 8, 0), ("rle-offset2-before-1", h + 8, off1 - 10),
                      ("rle-offset2-past-end", h + 8, frag.length + 1000), ("rle-offset2-equal-1", h + 8, off1),
                      ("rle-offset2-odd", h + 8, off2 + 1)]
            if base == "full-rle":
                edits2 = [e for e in edits2 if e[0] in ("rle-segments-3", "rle-offset2-past-end", "rle-offset2-before-1")]
            for slug, off, n in edits2:
                yield self.m(f, base, slug, f"RLE header uint32 at {off} set to {n:#x} (was segments {nseg}, offsets "
                             f"{off1}, {off2})", patch(data, off, struct.pack("<I", n)))
            if base == "rle":
                seg = h + off2
                yield self.m(f, base, "rle-run-overflow", "second segment starts with replicate runs of 128 bytes x 200",
                             patch(data, seg, b"\x81\x00" * 200))
                yield self.m(f, base, "rle-literal-overflow", "second segment ends with a literal run longer than the "
                             "data left", patch(data, h + frag.length - 2, b"\x7f\x00"))
        # the issue's recipe: one corrupted RLE file aborts the batch
        rle = self.b.full["full-rle"]
        yield self.m(f, "full-rle", "byte-373011-0x84", "byte 373011 set to 0x84 (issue 11 row 1)",
                     patch(rle, 373011, b"\x84"), recipe="11/1")

    # ---- raster
    def raster(self) -> Iterator[Mutant]:
        f = "raster"
        for base in ("png8", "png16"):
            data = self.b.get(base)
            chunks = png_chunks(data)
            ihdr, idat = chunks[0], next(c for c in chunks if c.type == b"IDAT")
            w, h = struct.unpack_from(">II", data, ihdr.data)
            fields = [("w-0", 0, struct.pack(">I", 0)), ("h-double", 4, struct.pack(">I", h * 2)),
                      ("w-plus1", 0, struct.pack(">I", w + 1)), ("w-2g", 0, struct.pack(">I", 0x7FFFFFFF)),
                      ("depth-3", 8, b"\3"), ("depth-16", 8, b"\x10"), ("colour-7", 9, b"\7"),
                      ("colour-palette", 9, b"\3"), ("interlace-1", 12, b"\1"), ("compression-1", 10, b"\1")]
            if base == "png16":
                fields = fields[:4] + [("depth-8", 8, b"\x08")]
            for slug, rel, new in fields:
                edited = patch(data, ihdr.data + rel, new)
                yield self.m(f, base, f"ihdr-{slug}", f"IHDR byte {rel} set to {new.hex()}, CRC fixed",
                             png_fix_crc(edited, ihdr))
                if base == "png8" and slug in ("h-double", "w-2g"):
                    yield self.m(f, base, f"ihdr-{slug}-badcrc", f"IHDR byte {rel} set to {new.hex()}, CRC left", edited)
            if base == "png16":
                continue
            yield self.m(f, base, "idat-len-huge", "IDAT length field 0x7fffffff",
                         patch(data, idat.start, struct.pack(">I", 0x7FFFFFFF)))
            yield self.m(f, base, "idat-len-minus1", "IDAT length field -1",
                         patch(data, idat.start, struct.pack(">I", idat.length - 1)))
            yield self.m(f, base, "ihdr-duplicated", "IHDR chunk written twice", data[:ihdr.end] + data[ihdr.start:ihdr.end]
                         + data[ihdr.end:])
            yield self.m(f, base, "idat-duplicated", "IDAT chunk written twice", data[:idat.end] + data[idat.start:idat.end]
                         + data[idat.end:])
            yield self.m(f, base, "iend-removed", "IEND chunk removed", data[:chunks[-1].start])
            yield self.m(f, base, "unknown-critical", "unknown critical chunk 'FUZZ' before IDAT",
                         data[:idat.start] + png_chunk(b"FUZZ", b"x" * 16) + data[idat.start:])
            yield self.m(f, base, "text-len-lie", "tEXt chunk announcing 2 GiB",
                         data[:idat.start] + png_chunk(b"tEXt", b"a\0b", length=0x7FFFFFF0) + data[idat.start:])
            yield self.m(f, base, "idat-crc-broken", "IDAT CRC flipped", xor_byte(data, idat.end - 1, 0xFF))
            yield self.m(f, base, "signature-broken", "PNG signature byte 1 changed", xor_byte(data, 1, 0x20))
            yield self.m(f, base, "cut-idat-half", "truncated in the middle of IDAT", data[:idat.data + idat.length // 2])
            yield self.m(f, base, "cut-after-ihdr", "truncated after IHDR", data[:ihdr.end])
        data = self.b.full["full-png"]
        ihdr = png_chunks(data)[0]
        yield self.m(f, "full-png", "ihdr-h-half", "IHDR height halved, CRC fixed",
                     png_fix_crc(patch(data, ihdr.data + 4, struct.pack(">I", 488 // 2)), ihdr))
        jpg = self.b.get("jpg")
        sof = jpeg_sof(jpg, 0)
        for slug, off, new in [("sof-y-0", sof + 5, b"\0\0"), ("sof-xy-65535", sof + 5, b"\xff\xff\xff\xff"),
                               ("sof-precision-12", sof + 4, b"\x0c"), ("sof-components-3", sof + 9, b"\3")]:
            yield self.m(f, "jpg", slug, f"SOF0 bytes at {off} set to {new.hex()}", patch(jpg, off, new))
        for slug, at in [("cut-header", 20), ("cut-half", len(jpg) // 2), ("no-eoi", len(jpg) - 2)]:
            yield self.m(f, "jpg", slug, f"truncated to {at} of {len(jpg)} bytes", jpg[:at])
        px = self.b.pixels
        std = [(256, 4, 115), (257, 4, 123), (258, 3, 16), (259, 3, 1), (262, 3, 1), (273, 4, -1), (277, 3, 1),
               (278, 4, 123), (279, 4, -2)]

        def tif(slug: str, what: str, entries: list[tuple[int, int, int]]) -> Mutant:
            return self.m(f, "tiff", slug, what, tiff_bytes(px, entries))

        def swap(tag: int, value: int) -> list[tuple[int, int, int]]:
            return [(t, ty, value if t == tag else v) for t, ty, v in std]

        yield tif("dup-size-200-then-100", "ImageWidth/ImageLength listed twice (200, then the real size)",
                  [(256, 4, 200), *std[:1], (257, 4, 200), *std[1:]])
        yield tif("dup-size-real-then-200", "ImageWidth/ImageLength listed twice (the real size, then 200)",
                  [*std[:1], (256, 4, 200), std[1], (257, 4, 200), *std[2:]])
        yield tif("strip-offset-past-eof", "StripOffsets beyond the end of the file", swap(273, 10_000_000))
        yield tif("strip-bytes-huge", "StripByteCounts 0x7fffffff", swap(279, 0x7FFFFFFF))
        yield tif("bits-0", "BitsPerSample 0", swap(258, 0))
        yield tif("bits-64", "BitsPerSample 64", swap(258, 64))
        yield tif("bits-12", "BitsPerSample 12 (data is 16-bit)", swap(258, 12))
        yield tif("samples-1000", "SamplesPerPixel 1000", swap(277, 1000))
        yield tif("compression-lzw", "Compression 5 (LZW) on raw data", swap(259, 5))
        yield tif("compression-jpeg", "Compression 7 (JPEG) on raw data", swap(259, 7))
        yield tif("compression-packbits", "Compression 32773 (PackBits) on raw data", swap(259, 32773))
        yield tif("photometric-palette", "Photometric 3 (palette) without a ColorMap", swap(262, 3))
        yield tif("rowsperstrip-0", "RowsPerStrip 0", swap(278, 0))
        tiff = self.b.get("tiff")
        yield self.m(f, "tiff", "ifd-loop", "next-IFD offset pointing at the IFD itself",
                     patch(tiff, 8 + 2 + 12 * 9, struct.pack("<I", 8)))
        yield self.m(f, "tiff", "ifd-count-65535", "IFD entry count 65535", patch(tiff, 8, b"\xff\xff"))
        yield self.m(f, "tiff", "ifd-offset-past-eof", "first IFD offset beyond the end",
                     patch(tiff, 4, struct.pack("<I", 1 << 30)))
        yield self.m(f, "tiff", "cut-in-ifd", "truncated inside the IFD", tiff[:40])
        pix = self.b.pixels
        nifti_edits: list[tuple[str, dict[str, Any]]] = [
            ("dim0-0", {"dim": [0, 115, 123, 1, 1, 1, 1, 1]}), ("dim0-8", {"dim": [8, 115, 123, 1, 1, 1, 1, 1]}),
            ("dims-negative", {"dim": [2, -115, 123, 1, 1, 1, 1, 1]}), ("dims-3d", {"dim": [3, 115, 123, 7, 1, 1, 1, 1]}),
            ("datatype-0", {"datatype": 0}), ("datatype-complex", {"datatype": 1792}),
            ("datatype-rgb", {"datatype": 128, "bitpix": 24}), ("bitpix-lies", {"bitpix": 64}),
            ("vox-offset-huge", {"vox_offset": 1e9}), ("vox-offset-nan", {"vox_offset": float("nan")}),
            ("pixdim-nan", {"pixdim": [1.0, float("nan"), float("inf"), 1, 1, 1, 1, 1]}),
            ("scl-slope-nan", {"scl_slope": float("nan")}), ("scl-slope-inf", {"scl_slope": float("inf")}),
            ("magic-broken", {"magic": b"n+2\0"}), ("sizeof-hdr-0", {"sizeof_hdr": 0})]
        for slug, kw in nifti_edits:
            yield self.m(f, "nii", slug, f"NIfTI header {kw}", nifti_bytes(pix, **kw))
        nii = self.b.get("nii")
        yield self.m(f, "nii", "cut-voxels", "truncated in the voxel data", nii[:352 + 1000])
        yield self.m(f, "niigz", "gzip-cut", "gzip stream truncated", self.b.get("niigz")[:200])
        for slug, hdr in [("dimsize-0", {"DimSize": "0 123"}), ("dimsize-negative", {"DimSize": "-115 123"}),
                          ("ndims-0", {"NDims": "0"}), ("ndims-3", {"NDims": "3", "DimSize": "115 123 1"}),
                          ("ndims-100", {"NDims": "100"}), ("elementtype-bogus", {"ElementType": "MET_FOO"}),
                          ("channels-1000", {"ElementNumberOfChannels": "1000"}),
                          ("compressed-garbage", {"CompressedData": "True", "CompressedDataSize": "100"}),
                          ("headersize-negative", {"HeaderSize": "-5"}), ("spacing-nan", {"ElementSpacing": "nan inf"})]:
            yield self.m(f, "mha", slug, f"MHA header {hdr}", mha_bytes(pix, header=hdr))
        yield self.m(f, "mha", "cut-data", "truncated in the pixel data", self.b.get("mha")[:400])
        for slug, hdr in [("sizes-0", {"sizes": "0 123"}), ("dimension-17", {"dimension": "17"}),
                          ("type-bogus", {"type": "quaternion"}), ("encoding-gzip-garbage", {"encoding": "gzip"}),
                          ("encoding-bzip2", {"encoding": "bzip2"}), ("sizes-one", {"sizes": "115"}),
                          ("spacings-nan", {"spacings": "nan inf"})]:
            yield self.m(f, "nrrd", slug, f"NRRD header {hdr}", nrrd_bytes(pix, header=hdr))
        yield self.m(f, "nrrd", "cut-data", "truncated in the pixel data", self.b.get("nrrd")[:300])

    # ---- metadata
    def metadata(self) -> Iterator[Mutant]:
        f = "metadata"

        def ds_variant(slug: str, what: str, edit: Callable[[Dataset], None], recipe: str = "") -> Mutant:
            ds = self.b.small_ds()
            with dicom_config.disable_value_validation():
                edit(ds)
            return self.m(f, "explicit", slug, what, _dicom_bytes(ds), recipe=recipe)

        def setter(**attrs: object) -> Callable[[Dataset], None]:
            def edit(ds: Dataset) -> None:
                for k, v in attrs.items():
                    setattr(ds, k, v)
            return edit

        variants: list[tuple[str, str, dict[str, object], str]] = [
            ("nul-bytes", "NUL bytes in PatientName, StudyDescription, ViewPosition",
             {"PatientName": "Doe\0^John", "StudyDescription": "CHEST\0\0PA", "ViewPosition": "PA\0"}, ""),
            ("long-strings", "60000-character PatientName and ImageComments",
             {"PatientName": "A" * 60000, "ImageComments": "x" * 60000}, ""),
            ("formula-values", "formula characters in UIDs, names, IDs (issue 11 row 9)",
             {"StudyInstanceUID": '=HYPERLINK("http://example.invalid","x")', "PatientID": "+1-2",
              "AccessionNumber": "@SUM(A1)", "SeriesDescription": "-2+3", "PatientName": "=cmd|' /C calc'!A0"}, "11/9"),
            ("uid-dotdot", "StudyInstanceUID '..' (issue 11 row 14)", {"StudyInstanceUID": ".."}, "11/14"),
            ("uid-traversal", "UIDs with path traversal", {"StudyInstanceUID": "../../../../tmp/cxr-fuzz",
                                                          "SeriesInstanceUID": "/etc/passwd", "SOPInstanceUID": "."}, ""),
            ("uid-empty", "empty Study/Series/SOP Instance UIDs",
             {"StudyInstanceUID": "", "SeriesInstanceUID": "", "SOPInstanceUID": ""}, ""),
            ("uid-long", "UIDs of 4000 characters", {"StudyInstanceUID": "1." * 2000, "SOPInstanceUID": "9" * 4000}, ""),
            ("birthdate-iso", "PatientBirthDate '1945-06-07' (issue 11 row 11)", {"PatientBirthDate": "1945-06-07"}, "11/11"),
            ("name-backslash", "backslash in PatientName (issue 11 row 11)", {"PatientName": "Doe\\Jane"}, "11/11"),
            ("dates-garbage", "StudyDate/StudyTime garbage", {"StudyDate": "99999999", "StudyTime": "256161.xyz"}, ""),
            ("charset-bogus", "SpecificCharacterSet 'BOGUS 99'", {"SpecificCharacterSet": "BOGUS 99"}, ""),
            ("charset-2022", "SpecificCharacterSet ISO 2022 IR 87 with stray escapes",
             {"SpecificCharacterSet": ["", "ISO 2022 IR 87"], "PatientName": "\x1b$B\x1b(B\x1b"}, ""),
            ("modality-multi", "Modality 'CR\\DX', BodyPartExamined with CR/LF",
             {"Modality": ["CR", "DX"], "BodyPartExamined": "CHEST\r\n<script>"}, ""),
            ("spacing-nonfinite", "PixelSpacing nan\\inf", {"PixelSpacing": ["nan", "inf"]}, ""),
            ("spacing-negative", "PixelSpacing -1\\0", {"PixelSpacing": ["-1", "0"]}, ""),
            ("spacing-huge", "PixelSpacing 1e308\\1e308", {"PixelSpacing": ["1e308", "1e308"]}, ""),
            ("window-nonfinite", "WindowCenter nan, WindowWidth inf", {"WindowCenter": "nan", "WindowWidth": "inf"}, ""),
            ("window-zero", "WindowWidth 0 and -5", {"WindowCenter": ["100", "7"], "WindowWidth": ["0", "-5"]}, ""),
            ("rescale-nonfinite", "RescaleSlope inf, RescaleIntercept nan",
             {"RescaleSlope": "inf", "RescaleIntercept": "nan"}, ""),
            ("rescale-zero", "RescaleSlope 0", {"RescaleSlope": "0", "RescaleIntercept": "0"}, ""),
            ("rescale-huge", "RescaleSlope 1e308", {"RescaleSlope": "1e308", "RescaleIntercept": "-1e308"}, ""),
            ("voi-function-bogus", "VOILUTFunction 'BOGUS'", {"VOILUTFunction": "BOGUS"}, ""),
            ("view-long", "ViewPosition of 5000 characters", {"ViewPosition": "P" * 5000}, ""),
            ("many-values", "WindowCenter with 20000 values", {"WindowCenter": ["1"] * 20000, "WindowWidth": ["2"] * 20000}, ""),
            ("presentation-intent", "PresentationIntentType 'FOR PROCESSING' + garbage",
             {"PresentationIntentType": "FOR PROCESSING\0\0"}, ""),
        ]
        for slug, what, attrs, recipe in variants:
            yield ds_variant(slug, what, setter(**attrs), recipe)

        def modality_lut(ds: Dataset) -> None:
            item = Dataset()
            item.LUTDescriptor = [0, 0, 16]
            item.LUTData = b""
            ds.ModalityLUTSequence = DicomSequence([item])

        def voi_lut(ds: Dataset) -> None:
            item = Dataset()
            item.LUTDescriptor = [65535, 32768, 40]
            item.add_new(0x00283006, "US", [1, 2, 3])  # LUTData
            ds.VOILUTSequence = DicomSequence([item])
            del ds.WindowCenter, ds.WindowWidth

        def private_big(ds: Dataset) -> None:
            block = ds.private_block(0x0099, "FUZZ", create=True)
            block.add_new(0x01, "UT", "y" * (2 << 20))
            block.add_new(0x02, "OB", b"\xff" * 65536)

        yield ds_variant("modality-lut-empty", "Modality LUT Sequence with LUTDescriptor 0\\0\\16 and no data", modality_lut)
        yield ds_variant("voi-lut-bogus", "VOI LUT Sequence with LUTDescriptor 65535\\32768\\40, 3 entries", voi_lut)
        yield ds_variant("private-2mib", "private UT of 2 MiB and OB of 64 KiB", private_big)
        # bytes pydicom would not write: invalid UTF-8 under ISO_IR 192, a VR length that overruns its neighbour
        data = _dicom_bytes(self.b.small_ds())
        lay = dicom_layout(data)
        utf = replace_value(data, lay, 0x00080005, b"ISO_IR 192")
        utf = replace_value(utf, dicom_layout(utf), PATIENT_NAME, b"M\xfcller^\xc3\x28\xff")
        yield self.m(f, "explicit", "utf8-invalid", "ISO_IR 192 with invalid UTF-8 bytes in PatientName", utf)
        depth = 1000
        opening = (encode_elem(0x0040A730, "SQ", b"", length=UNDEFINED) + struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED))
        closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        nested = opening * depth + encode_elem(0x00080104, "LO", b"deep") + closing * depth
        yield self.m(f, "explicit", f"sequence-{depth}-deep", f"ContentSequence nested {depth} deep (raw, undefined "
                     "lengths)", insert_elem(data, lay, nested, 0x0040A730))
        yield self.m(f, "nrrd", "datafile-etc-passwd", "detached NRRD header whose data file is /etc/passwd",
                     nrrd_bytes(self.b.pixels, header={"data file": "/etc/passwd", "type": "uint8", "sizes": "16 16"},
                                data=b""))
        yield self.m(f, "nrrd", "datafile-dotdot", "detached NRRD header whose data file is ../../../etc/hostname",
                     nrrd_bytes(self.b.pixels, header={"data file": "../../../etc/hostname", "type": "uint8",
                                                       "sizes": "4 4"}, data=b""))
        yield self.m(f, "mha", "datafile-etc-passwd", "MHA header whose ElementDataFile is /etc/passwd",
                     mha_bytes(self.b.pixels, header={"ElementType": "MET_UCHAR", "DimSize": "16 16",
                                                      "ElementDataFile": "/etc/passwd"}, data=b""))

    # ---- names
    def names(self) -> Iterator[Mutant]:
        f = "names"
        png = self.b.get("png8")
        dcm = self.b.get("explicit")

        def named(name: str, what: str, data: bytes, recipe: str = "", raw: bytes | None = None) -> Mutant:
            return Mutant(f, name, "png8" if data is png else "explicit", what, data, raw_name=raw, recipe=recipe)

        yield named("=1+1.png", "file name starting with '=' (issue 11 row 9)", png, "11/9")
        yield named("+cmd.png", "file name starting with '+'", png)
        yield named("@SUM(A1).dcm", "file name starting with '@'", dcm)
        yield named("-2+3.dcm", "file name starting with '-'", dcm)
        yield named("Muller-latin1.png", "file name with a Latin-1 byte, not valid UTF-8 (issue 11 row 2)", png,
                    "11/2", raw=b"M\xfcller.png")
        yield named("bad-utf8-dicom.dcm", "DICOM file name with invalid UTF-8 bytes", dcm, raw=b"scan-\xff\xfe.dcm")
        yield named("Müller-ü.png", "file name with valid non-ASCII UTF-8", png)
        yield named("x" * 240 + ".png", "a 244-character file name (issue 11 row 12)", png, "11/12")
        yield named("line\nbreak.png", "file name with a newline", png)
        yield named('quote",comma.dcm', "file name with a double quote and a comma", dcm)
        yield named("tab\there.png", "file name with a tab", png)
        yield named("back\\slash.dcm", "file name with a backslash", dcm)
        yield named("<script>alert(1)<%2fscript>.png", "file name with HTML", png)
        yield named("no-extension", "DICOM without an extension", dcm)
        yield named("wrong-extension.png", "DICOM named .png", dcm)
        yield named("wrong-extension.dcm", "PNG named .dcm", png)
        yield Mutant(f, "dangling-link.dcm", "-", "symbolic link to a missing file (issue 11 row 16)", kind="symlink",
                     target="does-not-exist.dcm", recipe="11/16")
        yield Mutant(f, "loop-a.dcm", "-", "symbolic link loop a -> b (issue 11 row 16)", kind="symlink",
                     target="loop-b.dcm", recipe="11/16")
        yield Mutant(f, "loop-b.dcm", "-", "symbolic link loop b -> a (issue 11 row 16)", kind="symlink",
                     target="loop-a.dcm", recipe="11/16")
        yield Mutant(f, "fifo.png", "-", "a FIFO (named pipe) with an image name (issue 11 row 16)", kind="fifo",
                     recipe="11/16")

    # ---- bombs
    def bombs(self) -> Iterator[Mutant]:
        f = "bombs"
        big = 20000
        tiny = self.b.tiny
        data = tiny["j2k"]
        lay = dicom_layout(data)
        siz = j2k_siz(data, lay.fragments[0].value)
        yield self.m(f, "tiny-j2k", "siz-20000", f"64x64 in the header, SIZ says {big}x{big} in 64x64 tiles "
                     "(issue 11 row 5)", patch(data, siz + 6, struct.pack(">II", big, big)), recipe="11/5")
        yield self.m(f, "tiny-j2k", "siz-20000-one-tile", f"64x64 in the header, SIZ says {big}x{big}, one tile "
                     "(issue 11 row 5)", patch(patch(data, siz + 6, struct.pack(">II", big, big)), siz + 22,
                                               struct.pack(">II", big, big)), recipe="11/5")
        for base in ("jls", "jpegll", "jpeg8"):
            if base not in tiny:
                continue
            data = tiny[base]
            sof = jpeg_sof(data, dicom_layout(data).fragments[0].value)
            yield self.m(f, f"tiny-{base}", f"sof-{big}", f"64x64 in the header, SOF {data[sof + 1]:02X} says {big}x{big} "
                         "(issue 11 row 5)", patch(data, sof + 5, struct.pack(">HH", big, big)), recipe="11/5")
        data = tiny["rle"]
        lay = dicom_layout(data)
        yield self.m(f, "tiny-rle", "header-16000", "RLE of 64x64 whose header says 16000x16000 (512 MB announced)",
                     set_us(set_us(data, lay, ROWS, 16000), lay, COLUMNS, 16000))
        data = self.b.get("explicit")
        lay = dicom_layout(data)
        yield self.m(f, "explicit", "header-16000", "native pixel data of 123x115 whose header says 16000x16000",
                     set_us(set_us(data, lay, ROWS, 16000), lay, COLUMNS, 16000))
        yield self.m(f, "explicit", "header-65535", "native pixel data of 123x115 whose header says 65535x65535",
                     set_us(set_us(data, lay, ROWS, 65535), lay, COLUMNS, 65535))
        # deflated DICOM: zeros in a private element before the pixels, after them, or as the pixels themselves
        exp = self.b.get("explicit")
        meta_src = self.b.get("deflate")
        mlay = dicom_layout(meta_src)
        meta = meta_src[:mlay.dataset_start]
        plain = exp[lay.dataset_start:]
        pl = dicom_layout(plain)
        gib = 1 << 30
        for slug, group, what in [("private-0009-1gib", 0x0009, "before the pixel data"),
                                  ("private-7fe1-1gib", 0x7FE1, "after the pixel data")]:
            creator = encode_elem((group << 16) | 0x0010, "LO", b"FUZZ BOMB")
            head = struct.pack("<HH", group, 0x1000) + b"OB\0\0" + struct.pack("<I", gib)
            after = next((e for e in pl.dataset if e.group > group), None)
            at = after.start if after is not None else len(plain)
            stream = raw_deflate(plain[:at] + creator + head, gib, plain[at:])
            yield self.m(f, "deflate", slug, f"Deflated Explicit VR LE, 1 GiB of zeros in a private OB {what} "
                         f"({len(stream)} bytes deflated; issue 11 row 6)", meta + stream, recipe="11/6")
        px = pl[PIXEL_DATA]
        prefix = set_us(set_us(plain, pl, ROWS, 64), pl, COLUMNS, 64)[:px.start]
        stream = raw_deflate(prefix + struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\0\0" + struct.pack("<I", gib), gib)
        yield self.m(f, "deflate", "pixeldata-1gib", "Deflated Explicit VR LE, 64x64 in the header, 1 GiB of zeros as "
                     "PixelData", meta + stream, recipe="11/6")
        # raster bombs
        png = self.b.get("png8")
        ihdr = png_chunks(png)[0]
        yield self.m(f, "png8", "ihdr-30000", "IHDR says 30000x30000 (CRC fixed), data of 123x115",
                     png_fix_crc(patch(png, ihdr.data, struct.pack(">II", 30000, 30000)), ihdr))
        ztxt = png_chunk(b"zTXt", b"Comment\0\0" + zlib_zeros(256 << 20))
        yield self.m(f, "png8", "ztxt-256mib", "zTXt chunk inflating to 256 MiB", png[:ihdr.end] + ztxt + png[ihdr.end:])
        px8 = np.zeros((100, 100), np.uint8)
        yield self.m(f, "tiff", "dup-size-30000-then-100", "TIFF IFD with ImageWidth/ImageLength listed twice "
                     "(30000, then 100; 8-bit) (issue 11 row 7)",
                     tiff_bytes(px8, [(256, 4, 30000), (256, 4, 100), (257, 4, 30000), (257, 4, 100), (258, 3, 8),
                                      (259, 3, 1), (262, 3, 1), (273, 4, -1), (277, 3, 1), (278, 4, 100),
                                      (279, 4, -2)]), recipe="11/7")
        yield self.m(f, "tiff", "size-30000", "TIFF header says 30000x30000, one strip of 100x100 bytes",
                     tiff_bytes(px8, [(256, 4, 30000), (257, 4, 30000), (258, 3, 8), (259, 3, 1), (262, 3, 1),
                                      (273, 4, -1), (277, 3, 1), (278, 4, 30000), (279, 4, -2)]))
        yield self.m(f, "nii", "dims-30000", "NIfTI header says 30000x30000 uint8, 10 KB of voxels",
                     nifti_bytes(np.zeros((100, 100), np.uint8), dim=[2, 30000, 30000, 1, 1, 1, 1, 1]))
        yield self.m(f, "nii", "dims-16000", "NIfTI header says 16000x16000 uint16 (512 MB), 20 KB of voxels",
                     nifti_bytes(np.zeros((100, 100), np.uint16), dim=[2, 16000, 16000, 1, 1, 1, 1, 1]))
        hdr = nifti_bytes(np.zeros((1, 1), np.uint8), dim=[2, 30000, 30000, 1, 1, 1, 1, 1])[:352]
        yield self.m(f, "niigz", "gzip-30000", "NIfTI.gz whose header says 30000x30000, inflating to 64 MiB",
                     gzip_of(hdr, 64 << 20))
        yield self.m(f, "mha", "compressed-30000", "MHA, DimSize 30000x30000, CompressedData of 64 MiB of zeros",
                     mha_bytes(px8, header={"DimSize": "30000 30000", "ElementType": "MET_UCHAR", "CompressedData": "True"},
                               data=zlib_zeros(64 << 20)))
        yield self.m(f, "nrrd", "gzip-30000", "NRRD, sizes 30000x30000, gzip of 64 MiB of zeros",
                     nrrd_bytes(px8, header={"sizes": "30000 30000", "type": "uint8", "encoding": "gzip"},
                                data=gzip_of(b"", 64 << 20)))

    # ---- random
    def random_mutants(self) -> Iterator[Mutant]:
        """Endless seeded mutations over every base, round robin: 1-4 byte or bit flips (half at structure-aware
        offsets), a truncation, a duplicated, inserted or deleted slice."""
        rng = random.Random(f"cxrtriage-fuzz-random:{self.seed}")
        names = [*self.b.small, "full-rle", "full-explicit", "full-lateral", "full-png", "full-j2k"]
        weights = dict.fromkeys(self.b.dicom_names(deflate=True), 3) | {"full-j2k": 1}
        pool = [n for n in names for _ in range(weights.get(n, 2))]
        hot_cache: dict[str, list[tuple[int, int]]] = {}
        i = 0
        while True:
            base = pool[i % len(pool)] if i < len(pool) else rng.choice(pool)
            i += 1
            data = self.b.get(base)
            hot = hot_cache.setdefault(base, _hot_ranges(base, data))
            op = rng.choice(["flip", "flip", "bitflip", "bitflip", "truncate", "duplicate", "insert", "delete"])
            if op in ("flip", "bitflip"):
                edits = []
                out = data
                for _ in range(rng.randint(1, 4)):
                    lo, hi = rng.choice(hot) if hot and rng.random() < 0.6 else (0, len(data))
                    off = rng.randrange(lo, max(hi, lo + 1))
                    off = min(off, len(data) - 1)
                    new = rng.randrange(256) if op == "flip" else out[off] ^ (1 << rng.randrange(8))
                    edits.append(f"{off}:{out[off]:02x}->{new:02x}")
                    out = patch(out, off, bytes([new]))
                yield Mutant("random", f"{i:04d}-{base}-{op}.{ext(base)}", base, f"{op} bytes " + ", ".join(edits), out)
            elif op == "truncate":
                lo, hi = rng.choice(hot) if hot and rng.random() < 0.5 else (0, len(data))
                at = rng.randrange(lo, max(hi, lo + 1))
                yield Mutant("random", f"{i:04d}-{base}-truncate.{ext(base)}", base, f"truncated at {at}", data[:at])
            else:
                lo, hi = rng.choice(hot) if hot else (0, len(data))
                start = rng.randrange(lo, max(hi, lo + 1))
                n = rng.randint(1, 64)
                to = rng.randrange(len(data))
                if op == "duplicate":
                    out, what = data[:to] + data[start:start + n] + data[to:], f"{n} bytes at {start} copied to {to}"
                elif op == "insert":
                    blob = rng.randbytes(n)
                    out, what = data[:start] + blob + data[start:], f"{n} random bytes inserted at {start}: {blob.hex()}"
                else:
                    out, what = data[:start] + data[start + n:], f"{n} bytes deleted at {start}"
                yield Mutant("random", f"{i:04d}-{base}-{op}.{ext(base)}", base, what, out)


def _hot_ranges(base: str, data: bytes) -> list[tuple[int, int]]:
    """Byte ranges where damage is most interesting: element headers and pixel-module values, item headers,
    the first bytes of every codestream (SIZ/SOF/RLE header), PNG chunk headers, the TIFF IFD, text headers."""
    e = ext(base)
    if e == "dcm":
        try:
            lay = dicom_layout(data)
        except (ValueError, struct.error):
            return []
        out = [(el.start, el.value) for el in lay.elems]
        out += [(el.start, el.end) for el in lay.elems if el.tag in PIXEL_MODULE or el.tag == TRANSFER_SYNTAX]
        for item in lay.get(PIXEL_DATA).items if lay.get(PIXEL_DATA) is not None else ():  # type: ignore[union-attr]
            out += [(item.start, item.value + min(item.length, 200))]
        if lay.transfer_syntax == DEFLATED_LE:
            out += [(lay.dataset_start, lay.dataset_start + 64)]
        return out
    if e == "png":
        return [(c.start, c.data + (c.length if c.type == b"IHDR" else 8)) for c in png_chunks(data)]
    if e == "jpg":
        return [(0, min(700, len(data)))]
    if e == "tif":
        return [(0, 8 + 2 + 12 * 9 + 4)]
    if e in ("nii",):
        return [(0, 352)]
    if e in ("mha", "nrrd"):
        return [(0, data.index(b"\n\n") + 2 if b"\n\n" in data else min(300, len(data)))]
    return [(0, min(64, len(data)))]


# --------------------------------------------------------------------------- the corpus


def catalogue(bases: Bases, seed: int) -> list[Mutant]:
    """Every structured mutation, in family order (the ``random`` family is separate)."""
    c = Catalogue(bases, seed)
    out = [*c.pristine(), *c.dicom_tags(), *c.dicom_framing(), *c.codestream(), *c.raster(), *c.metadata(),
           *c.names(), *c.bombs()]
    return out


ALWAYS = ("pristine", "metadata", "names", "bombs")
"""Families kept whole however small ``count`` is (they are small, and each of their files is a distinct case)."""


def select(count: int, seed: int, bases: Bases | None = None) -> list[Mutant]:
    """``count`` mutants: the whole catalogue plus random ones; or, when ``count`` is smaller than the catalogue,
    the families in ``ALWAYS``, every issue recipe (at least those, whatever ``count``), then a fifth of what
    ``count`` leaves random mutants and the rest a seeded sample of the other structured ones."""
    bases = bases or Bases()
    cat = catalogue(bases, seed)
    rand = Catalogue(bases, seed).random_mutants()
    if count >= len(cat):
        return cat + [next(rand) for _ in range(count - len(cat))]
    must = [m for m in cat if m.recipe or m.family in ALWAYS]
    rest = [m for m in cat if not (m.recipe or m.family in ALWAYS)]
    n_random = max(count - len(must), 0) // 5
    keep = {id(m) for m in must}
    sample = random.Random(f"cxrtriage-fuzz-select:{seed}").sample(rest, max(count - len(must) - n_random, 0))
    keep |= {id(m) for m in sample}
    return [m for m in cat if id(m) in keep] + [next(rand) for _ in range(n_random)]


CONTROLS = ("explicit", "png8")


def controls(bases: Bases) -> list[Mutant]:
    """Two good files put in every family folder: a bad file must not take them down with it."""
    return [Mutant("", f"000-control-{n}.{ext(n)}", n, "control (unmodified)", bases.get(n), expect="scored")
            for n in CONTROLS]


def write_mutant(folder: Path, m: Mutant) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), m.raw_name))) if m.raw_name else folder / m.name
    if m.kind == "symlink":
        path.symlink_to(m.target)
    elif m.kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(m.data)
    return path


def build_corpus(dest: Path, *, count: int = 300, seed: int = 0, sample_dir: Path = SAMPLE_DATA,
                 families: tuple[str, ...] | None = None) -> list[Mutant]:
    """Write the corpus under ``dest/<family>/`` (+ ``dest/corpus.json``); returns every file written, controls
    included (their family set to the folder they are in)."""
    bases = Bases(sample_dir)
    quiet = logging.getLogger("pydicom")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # pydicom logs the hostile values it is asked to write
    try:
        mutants = select(count, seed, bases)
    finally:
        quiet.setLevel(level)
    if families is not None:
        mutants = [m for m in mutants if m.family in families]
    written: list[Mutant] = []
    for fam in dict.fromkeys(m.family for m in mutants):
        for c in controls(bases):
            cm = Mutant(fam, c.name, c.base, c.mutation, c.data, expect="scored")
            write_mutant(dest / fam, cm)
            written.append(cm)
    for m in mutants:
        write_mutant(dest / m.family, m)
        written.append(m)
    names = [m.relpath for m in written]
    if len(set(names)) != len(names):
        raise AssertionError("duplicate corpus file names")
    (dest / CORPUS_JSON).write_text(json.dumps({"count": count, "seed": seed, "skipped_bases": bases._skipped,
                                                "files": [m.describe() for m in written]}, indent=1))
    return written
