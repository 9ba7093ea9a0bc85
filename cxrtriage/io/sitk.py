"""Read NIfTI / MetaImage (MHA/MHD) / NRRD radiographs with SimpleITK: 2-D images, or 3-D with a single slice."""

from __future__ import annotations

import gzip
import math
import os
import re
import shutil
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.errors import InputError
from cxrtriage.io.limits import MAX_HEADER_BYTES, check_size
from cxrtriage.io.native import decoder_notes, distinct_messages, held_native_output
from cxrtriage.io.reduced import area_scale, block_average
from cxrtriage.types import Image2D, InputKind, SourceRef

_BYTES = {"8-bit unsigned integer": 1, "8-bit signed integer": 1, "16-bit unsigned integer": 2,
          "16-bit signed integer": 2, "32-bit unsigned integer": 4, "32-bit signed integer": 4,
          "32-bit float": 4, "64-bit float": 8, "64-bit unsigned integer": 8, "64-bit signed integer": 8}
_RANGES = {"8-bit unsigned integer": (0.0, 255.0), "16-bit unsigned integer": (0.0, 65535.0),
           "8-bit signed integer": (-128.0, 127.0), "16-bit signed integer": (-32768.0, 32767.0)}


@dataclass(frozen=True, slots=True)
class SitkHeader:
    """Image information SimpleITK reads without loading the voxels."""

    size: tuple[int, ...]  # x, y[, z...] as ITK orders them
    spacing: tuple[float, ...]
    components: int
    pixel_type: str
    direction_is_identity: bool
    warnings: tuple[str, ...] = ()  # what ITK warned about while reading the header (`itk_warnings`)

    @property
    def rows(self) -> int:
        return self.size[1] if len(self.size) > 1 else 1

    @property
    def columns(self) -> int:
        return self.size[0]

    @property
    def slices(self) -> int:
        return int(np.prod(self.size[2:])) if len(self.size) > 2 else 1


_IMAGE_IO = {"nifti": "NiftiImageIO", "metaimage": "MetaImageIO", "nrrd": "NrrdImageIO"}


@contextmanager
def _readable_by_itk(path: Path, fmt: str) -> Iterator[str]:
    """A path ITK will open as ``fmt``: ITK's NIfTI reader insists on a .nii/.nii.gz name, so a file recognised
    by content under another name is reached through a temporary, correctly named link."""
    name = path.name.lower()
    if fmt != "nifti" or name.endswith((".nii", ".nii.gz")):
        yield str(path)
        return
    with path.open("rb") as fh:
        suffix = ".nii.gz" if fh.read(2) == b"\x1f\x8b" else ".nii"
    with tempfile.TemporaryDirectory(prefix="cxrtriage-") as tmp:
        link = Path(tmp) / f"image{suffix}"
        try:
            os.symlink(path.resolve(), link)
        except OSError:
            shutil.copyfile(path, link)
        yield str(link)


def _reader(path: str, fmt: str) -> Any:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    if fmt in _IMAGE_IO:
        reader.SetImageIO(_IMAGE_IO[fmt])
    reader.SetFileName(path)
    return reader


def _fmt(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    from cxrtriage.io.sniff import sniff

    return sniff(path).fmt


def read_sitk_header(path: str | Path, fmt: str | None = None) -> SitkHeader:
    """Size, spacing and pixel type from the header. Raises InputError when SimpleITK cannot read it."""
    import SimpleITK as sitk

    p = Path(path)
    fmt = _fmt(p, fmt)
    if fmt == "nifti":
        problem = _nifti_problem(p)
        if problem is not None:
            raise InputError(f"{p}: {problem}; the file is refused before SimpleITK reads it")
    with _readable_by_itk(p, fmt) as itk_path, held_native_output() as held:
        reader = _reader(itk_path, fmt)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise InputError(f"{path}: SimpleITK cannot read this image header ({_itk_message(exc)})") from exc
    warnings = itk_warnings(held.text, (itk_path, str(path), p.name))
    size = tuple(int(s) for s in reader.GetSize())
    if not size:  # ITK accepts NDims = 0 (found by tests/fuzz: it used to surface as an IndexError)
        raise InputError(f"{path}: the image header declares no dimensions; the file is damaged")
    direction = np.asarray(reader.GetDirection(), dtype=float)
    dim = len(size)
    identity = direction.size == dim * dim and np.allclose(direction.reshape(dim, dim), np.eye(dim))
    return SitkHeader(size=size, spacing=tuple(float(s) for s in reader.GetSpacing()),
                      components=int(reader.GetNumberOfComponents()),
                      pixel_type=sitk.GetPixelIDValueAsString(reader.GetPixelID()),
                      direction_is_identity=bool(identity), warnings=warnings)


def _nifti_problem(p: Path) -> str | None:
    """Why ITK must not read this NIfTI header, or None.

    ITK's NIfTI reader loads every header extension, up to ``vox_offset`` bytes, when it only reads the header:
    in a .nii.gz a few hundred kilobytes can announce gigabytes of extension (all inflated and kept).
    """
    try:
        with p.open("rb") as fh:
            head = fh.read(540)
        if head[:2] == b"\x1f\x8b":
            with gzip.open(p, "rb") as gz:
                head = gz.read(540)
    except (OSError, EOFError, zlib.error) as exc:
        return f"the NIfTI header cannot be read ({exc})"
    vox_offset: float | None = None
    for endian in "<>":
        if len(head) >= 348 and struct.unpack(endian + "i", head[:4])[0] == 348:
            vox_offset = struct.unpack(endian + "f", head[108:112])[0]
        elif len(head) >= 540 and struct.unpack(endian + "i", head[:4])[0] == 540:
            vox_offset = struct.unpack(endian + "q", head[168:176])[0]
    if vox_offset is None:
        return None  # not NIfTI after all: ITK says why
    if not math.isfinite(vox_offset) or vox_offset > MAX_HEADER_BYTES:
        return (f"NIfTI vox_offset {vox_offset:.0f} leaves {vox_offset / 2**20:.0f} MiB for header extensions, "
                f"more than the {MAX_HEADER_BYTES >> 20} MiB accepted (a decompression bomb or a corrupt file)")
    return None


def read_sitk(path: str | Path, fmt: str | None = None, *,
              max_scale: Callable[[tuple[int, int]], float] | None = None) -> Image2D:
    """Read a 2-D image (or a 3-D image with one slice); a true volume or a colour image is an InputError.

    ``max_scale`` (see `cxrtriage.io.read.read_image`): the image, read in full, is then block averaged
    (`cxrtriage.io.reduced.block_average`) as far as it allows."""
    import SimpleITK as sitk

    p = Path(path)
    fmt = _fmt(p, fmt)
    header = read_sitk_header(p, fmt)
    if header.slices > 1:
        raise InputError(f"{p}: a {'x'.join(map(str, header.size))} volume ({header.slices} slices), not a 2-D "
                         "radiograph; export the single projection image instead")
    if header.components != 1:
        raise InputError(f"{p}: {header.components} components per pixel (colour/vector image); expected greyscale")
    check_size(p, header.rows, header.columns, bytes_per_sample=_BYTES.get(_scalar(header.pixel_type), 8),
               reader="sitk", encoded_bytes=p.stat().st_size)
    with _readable_by_itk(p, fmt) as itk_path, held_native_output() as held:
        reader = _reader(itk_path, fmt)
        try:
            image = reader.Execute()
        except RuntimeError as exc:
            raise InputError(f"{p}: SimpleITK cannot read the pixel data ({_itk_message(exc)})") from exc
    arr = sitk.GetArrayFromImage(image)  # [z,] y, x
    arr = arr.reshape(arr.shape[-2:]) if arr.ndim > 2 else arr
    notes = [f"read with SimpleITK ({header.pixel_type})"]
    said = distinct_messages(header.warnings + itk_warnings(held.text, (itk_path, str(path), p.name)))
    notes.extend(decoder_notes(said, "SimpleITK"))
    if not header.direction_is_identity:
        notes.append("direction matrix is not identity: rows/columns kept as stored (not reoriented)")
    scalar = _scalar(header.pixel_type)
    if scalar in _RANGES:
        vr = _RANGES[scalar]
    else:
        vr = (float(np.min(arr)), float(np.max(arr)))
        notes.append(f"{scalar} samples: value range taken from the data")
    spacing: tuple[float, float] | None = None
    sx, sy = header.spacing[0], header.spacing[1] if len(header.spacing) > 1 else header.spacing[0]
    if all(np.isfinite(v) and v > 0 for v in (sx, sy)) and not (sx == 1.0 and sy == 1.0):
        spacing = (float(sy), float(sx))
        notes.append("pixel spacing from the image header")
    else:
        notes.append("pixel spacing unknown (header spacing is 1x1 default or invalid)")
    rows, cols = arr.shape
    scale = area_scale((rows, cols), max_scale)
    pixels = block_average(arr, scale) if scale > 1 else np.ascontiguousarray(arr, dtype=np.float32)
    return Image2D(pixels=pixels, value_range=vr, source=SourceRef(path=str(p), kind=InputKind.SITK),
                   pixel_spacing_mm=spacing, notes=tuple(notes), full_shape=(rows, cols) if scale > 1 else None,
                   scale=scale)


def _scalar(pixel_type: str) -> str:
    return pixel_type.replace("vector of ", "")


def itk_warnings(text: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """ITK's warnings in ``text`` (what it printed on stderr) without its source-file lines and object addresses, and
    with the file's name (``names``: the ways ITK may have been given it) replaced by "the file": notes must not name
    an input, since de-identified outputs promise that no text does.

    ITK prints "WARNING: In /path/to/itkNiftiImageIO.cxx, line 2008" and then "NiftiImageIO (0x5604f9041570):
    scan.nii has unexpected scales in sform"; the note keeps "has unexpected scales in sform", prefixed by "the file".
    """
    out: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("WARNING: In "):
            continue
        line = _ITK_OBJECT.sub("", line)
        for name in sorted((n for n in names if n), key=len, reverse=True):  # the longest first: a path holds a name
            line = line.replace(name, "the file")
        out.append(line)
    return distinct_messages(out)


_ITK_OBJECT = re.compile(r"^\w+ \(0x[0-9a-fA-F]+\): ")


def _itk_message(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if "ERROR" in line or "error" in line] or lines
    return (useful[-1] if useful else type(exc).__name__)[:240]
