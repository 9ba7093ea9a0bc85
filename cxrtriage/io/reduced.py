"""Decode JPEG 2000 and JPEG at a reduced resolution: OpenJPEG resolution levels (glymur), libjpeg DCT scaling.

A JPEG 2000 codestream is a wavelet pyramid: OpenJPEG can stop ``r`` levels short of the full image and return
it at 1/2**r per side for a fraction of the work (the RG1 chest, 1955x1841, lossless: ~480 ms in full, ~10 ms at
1/8). libjpeg scales the inverse DCT of a JPEG to 1/2, 1/4 or 1/8 (OpenCV's ``IMREAD_REDUCED_GRAYSCALE_*``).
Both give the image low-pass filtered and subsampled, ``ceil(size / scale)`` pixels per side, values in the
range of the full image.

Callers say how much they may lose (``max_scale``: the largest reduction per side their consumers accept) and
get the largest power of two at or below it that the codestream offers, or None when no reduction applies.
Every failure raises `ReducedDecodeError`; the readers then decode in full, so this path can only make reading
faster, never make a readable file fail. The codestream's size has been checked against the header before any
of this runs (`cxrtriage.io.dicom.checks`, `cxrtriage.io.raster.read_raster_header`).
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cxrtriage.types import reduced_shape

log = logging.getLogger(__name__)

MAX_JPEG_SCALE = 8  # libjpeg scales the IDCT to 1/2, 1/4 or 1/8
_CV2_REDUCED_GREY = {2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
                     8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


class ReducedDecodeError(RuntimeError):
    """The reduced-resolution path cannot decode this codestream (the caller decodes it in full)."""


@dataclass(frozen=True, slots=True)
class ReducedPixels:
    """Samples decoded at 1/``scale`` resolution per side, and how."""

    samples: np.ndarray
    scale: int
    decoder: str


def scale_for(max_scale: float, limit: int) -> int:
    """The largest power of two <= ``max_scale`` and <= ``limit`` (1 = no reduction)."""
    if not math.isfinite(max_scale) or max_scale < 2:
        return 1
    return int(min(1 << int(math.floor(math.log2(max_scale))), limit))


def glymur_version() -> str | None:
    """'glymur X (OpenJPEG Y)' when glymur and the system libopenjp2 are usable, else None."""
    try:
        import glymur
    except Exception:  # not installed, or libopenjp2 missing (glymur raises at import then on some versions)
        return None
    lib = getattr(glymur.version, "openjpeg_version", "") or ""
    if not lib or lib == "0.0.0":
        return None
    return f"glymur {glymur.__version__} (OpenJPEG {lib})"


def _j2k_main_header(code: bytes) -> tuple[int, int, bool, int, tuple[int, int]]:
    """(decomposition levels, precision, signed, components, image origin) from the COD and SIZ segments.

    Only the main header is read (up to the first tile part, SOT).
    """
    if code[:4] != b"\xff\x4f\xff\x51":
        raise ReducedDecodeError("not a bare JPEG 2000 codestream (SOC + SIZ)")
    lsiz = int.from_bytes(code[4:6], "big")
    xo, yo = int.from_bytes(code[16:20], "big"), int.from_bytes(code[20:24], "big")
    csiz = int.from_bytes(code[40:42], "big")
    ssiz = code[42]
    pos = 4 + lsiz
    levels: int | None = None
    while pos + 4 <= len(code):
        marker = int.from_bytes(code[pos:pos + 2], "big")
        if marker == 0xFF90:  # SOT: end of the main header
            break
        length = int.from_bytes(code[pos + 2:pos + 4], "big")
        if length < 2:
            raise ReducedDecodeError(f"marker {marker:04X} with length {length}")
        if marker == 0xFF52 and pos + 4 + 5 < len(code):  # COD: Scod, SGcod (4 bytes), then decomposition levels
            levels = code[pos + 4 + 5]
        pos += 2 + length
    if levels is None:
        raise ReducedDecodeError("no COD segment in the main header")
    return levels, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), csiz, (yo, xo)


def _memory_file(data: bytes) -> tuple[str, int | None, str | None]:
    """A path that reads as ``data``: an anonymous memory file on Linux, else a temporary file.

    glymur only reads from paths. Returns (path, descriptor to close, temporary file to remove).
    """
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        fd = os.memfd_create("cxrtriage-j2k", os.MFD_CLOEXEC)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        return f"/proc/self/fd/{fd}", fd, None
    tmp = tempfile.NamedTemporaryFile(suffix=".j2k", delete=False)
    with tmp:
        tmp.write(data)
    return tmp.name, None, tmp.name


def decode_j2k_reduced(code: bytes, *, rows: int, columns: int, max_scale: float) -> ReducedPixels | None:
    """A bare JPEG 2000 codestream (one greyscale component) at the largest reduction <= ``max_scale``.

    None when no reduction applies (``max_scale`` < 2, no decomposition level to discard). The decoded size must
    be ``ceil(rows / scale)`` x ``ceil(columns / scale)``.

    Raises:
        ReducedDecodeError: glymur/libopenjp2 unavailable, a codestream this path does not handle (several
            components, precision above 16 bits, an image origin other than 0), or a decoder error.
    """
    levels, precision, signed, components, origin = _j2k_main_header(code)
    scale = scale_for(max_scale, 1 << levels)
    if scale == 1:
        return None
    if components != 1 or precision > 16 or origin != (0, 0):
        raise ReducedDecodeError(f"{components} component(s) of {precision} bits at origin {origin}: not handled")
    version = glymur_version()
    if version is None:
        raise ReducedDecodeError("glymur or the system libopenjp2 is not available")
    import glymur

    if glymur.get_option("lib.num_threads") != 0:
        # 0: OpenJPEG decodes in the calling thread. 1 (glymur's default) starts a one-thread pool per image, which
        # costs ~2 ms; a decode worker is one core anyway.
        glymur.set_option("lib.num_threads", 0)
    path, fd, tmp = _memory_file(code)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # glymur warns about boxes; the codestream was checked already
            jp2 = glymur.Jp2kr(path)
            arr = np.asarray(jp2[::scale, ::scale])
    except ReducedDecodeError:
        raise
    except Exception as exc:  # OpenJPEGLibraryError, IOError, ValueError...: decode in full instead
        raise ReducedDecodeError(f"glymur: {' '.join(str(exc).split())[:200]}") from exc
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    if arr.shape != reduced_shape((rows, columns), scale):
        raise ReducedDecodeError(f"decoded {arr.shape} at 1/{scale}, expected {reduced_shape((rows, columns), scale)}")
    if signed != (arr.dtype.kind == "i"):
        raise ReducedDecodeError(f"samples came back as {arr.dtype} for a {'signed' if signed else 'unsigned'} stream")
    levels_used = scale.bit_length() - 1
    return ReducedPixels(arr, scale, f"{version}, {levels_used} resolution level(s) discarded")


def decode_jpeg_reduced(data: bytes | np.ndarray, *, rows: int, columns: int, components: int, precision: int,
                        max_scale: float) -> ReducedPixels | None:
    """An 8-bit greyscale JPEG (DCT-based, baseline or progressive) at 1/2, 1/4 or 1/8 by libjpeg's scaled IDCT.

    None when no reduction applies (``max_scale`` < 2).

    Raises:
        ReducedDecodeError: not one 8-bit component (lossless, 12-bit and colour JPEG are decoded in full),
            OpenCV cannot decode it, or the size is not ``ceil(size / scale)``.
    """
    scale = scale_for(max_scale, MAX_JPEG_SCALE)
    if scale == 1:
        return None
    if components != 1 or precision != 8:
        raise ReducedDecodeError(f"{components} component(s) of {precision} bits: DCT scaling is used for 8-bit grey")
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    try:
        # EXIF orientation is applied as in a full decode; a rotated image then fails the size check below
        arr = cv2.imdecode(buf, _CV2_REDUCED_GREY[scale])
    except cv2.error as exc:
        raise ReducedDecodeError(f"OpenCV: {' '.join(str(exc).split())[:200]}") from exc
    if arr is None:
        raise ReducedDecodeError("OpenCV could not decode the JPEG at a reduced size")
    if arr.shape != reduced_shape((rows, columns), scale) or arr.dtype != np.uint8:
        raise ReducedDecodeError(f"decoded {arr.dtype} {arr.shape} at 1/{scale}, expected "
                                 f"{reduced_shape((rows, columns), scale)}")
    return ReducedPixels(arr, scale, f"OpenCV {cv2.__version__} (libjpeg DCT scaling 1/{scale})")
