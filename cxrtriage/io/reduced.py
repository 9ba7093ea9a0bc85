"""Decode at a reduced resolution: OpenJPEG resolution levels, libjpeg DCT scaling, and block averaging for the rest.

A JPEG 2000 codestream is a wavelet pyramid: OpenJPEG can stop ``r`` levels short of the full image and return
it at 1/2**r per side for a fraction of the work (the RG1 chest, 1955x1841, lossless: ~480 ms in full, ~10 ms at
1/8). libjpeg scales the inverse DCT of a JPEG to 1/2, 1/4 or 1/8 (OpenCV's ``IMREAD_REDUCED_GRAYSCALE_*``).
Both give the image low-pass filtered and subsampled, ``ceil(size / scale)`` pixels per side, values in the
range of the full image.

The rest of the pipeline reads a reduced pixel as the area average of the ``scale`` x ``scale`` full pixels it covers
(`cxrtriage.types.Image2D`), which is what a full decode followed by the model's area resize computes. libjpeg's
scaled IDCT is that already. A JPEG 2000 resolution level is not: the wavelet low-pass band is sharper, and its
sample ``k`` is centred on full pixel ``scale*k`` instead of ``scale*k + (scale-1)/2``. Left as it is, the 486 NIH
images (1024 px, 1/2) scored up to 0.030 (lossless) and 0.036 (lossy) apart from full decoding, against 0.008 for
an exact area average; one 4x4 filter per wavelet and reduction (`area_kernel`, fitted by least squares on other
radiographs by ``scripts/fit_j2k_area_kernels.py``) makes the level an area average to within a fraction of a grey
level and brings those differences to the area average's own.

Every other encoding (uncompressed, RLE, JPEG lossless and JPEG-LS DICOM; PNG, TIFF; the SimpleITK formats) is
decoded in full and then reduced by `block_average`: the exact area average, so that the intensity mapping, the
model's resize and the quality checks after it work on the small image instead of the full one.

Callers say how much they may lose (``max_scale``: the largest reduction per side their consumers accept) and
get the largest power of two at or below it that the codestream offers, or None when no reduction applies.
Every failure raises `ReducedDecodeError`; the readers then decode in full, so this path can only make reading
faster, never make a readable file fail. The codestream's size has been checked against the header before any
of this runs (`cxrtriage.io.dicom.checks`, `cxrtriage.io.raster.read_raster_header`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from cxrtriage.io.native import decoder_notes, distinct_messages, held_native_output
from cxrtriage.io.openjpeg import OpenJpegError, decode_reduced, openjpeg_version
from cxrtriage.types import reduced_shape

log = logging.getLogger(__name__)

MAX_JPEG_SCALE = 8  # libjpeg scales the IDCT to 1/2, 1/4 or 1/8
MAX_AREA_SCALE = 8  # block averaging after a full decode: as far as the codecs' own reductions go
MAX_J2K_SCALE = 8  # the area filters below are fitted for 1/2, 1/4 and 1/8; deeper levels are not used
AREA_KERNEL_TAPS = 4  # the filters read the 4 x 4 samples at offsets -1..+2 around the one they correct
_CV2_GREY = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
             8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


class ReducedDecodeError(RuntimeError):
    """The reduced-resolution path cannot decode this codestream (the caller decodes it in full)."""


@dataclass(frozen=True, slots=True)
class ReducedPixels:
    """Samples decoded at 1/``scale`` resolution per side, and how.

    ``area_kernel``: the filter that turns the samples (once mapped to float values: modality LUT, MONOCHROME1) into
    area averages (`area_average`), or None when they are area averages already.
    """

    samples: np.ndarray
    scale: int
    decoder: str
    area_kernel: np.ndarray | None = None
    notes: tuple[str, ...] = ()  # what the decoder printed or warned while decoding, as notes for the image

    def area_average(self, values: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
        """``values`` (float, the samples' shape) as area averages of the full image, kept inside ``value_range``.

        The filter has small negative taps, so it may overshoot an edge by a little; an area average never leaves
        the range of the values it averages.
        """
        if self.area_kernel is None:
            return values
        out = cv2.filter2D(values.astype(np.float32, copy=False), cv2.CV_32F, self.area_kernel, anchor=(1, 1),
                           borderType=cv2.BORDER_REPLICATE)
        lo, hi = sorted(value_range)
        return np.clip(out, lo, hi, out=out)


def scale_for(max_scale: float, limit: int) -> int:
    """The largest power of two <= ``max_scale`` and <= ``limit`` (1 = no reduction)."""
    if not math.isfinite(max_scale) or max_scale < 2:
        return 1
    return int(min(1 << int(math.floor(math.log2(max_scale))), limit))


def area_scale(shape: tuple[int, int], max_scale: Callable[[tuple[int, int]], float] | None) -> int:
    """The power of two `block_average` reduces an image of ``shape`` by, for a caller that accepts ``max_scale``
    (None: no reduction, 1)."""
    return scale_for(max_scale(shape), MAX_AREA_SCALE) if max_scale is not None else 1


def block_average(arr: np.ndarray, scale: int) -> np.ndarray:
    """``arr`` (2-D) at 1/``scale`` per side (a power of two), float32: each pixel the mean of the ``scale`` x ``scale``
    block it covers, ``ceil(size / scale)`` pixels per side; at the bottom and right edges, the mean of the part of
    the block inside the image.

    This is the reduction for what has no reduced decoding of its own (uncompressed, RLE, JPEG lossless, PNG...):
    the file is decoded in full, and every later step (intensity mapping, model resize, quality checks) works on
    the small image instead of the full one. Why halving by OpenCV: its area resize at exactly 1/2 is a vectorised
    special case, ~0.3 ms on the 1955 x 1841 RG1 chest where one step to 1/4 takes ~1.3 ms and the float
    conversion of the full image alone ~0.6 ms. The first halving stays in the stored integers (8-bit samples are
    first scaled by 4, so that their 2 x 2 means are exact; 16-bit means are rounded, to within half a stored unit);
    the later ones run in float32.
    """
    if scale < 1 or scale & (scale - 1):
        raise ValueError(f"block_average: scale must be a power of two, got {scale}")
    rows, cols = arr.shape
    out_shape = reduced_shape((rows, cols), scale)
    if scale == 1:
        return np.ascontiguousarray(arr, dtype=np.float32)
    h, w = rows - rows % scale, cols - cols % scale
    out = np.empty(out_shape, dtype=np.float32)
    if h and w:
        out[:h // scale, :w // scale] = _halvings(arr[:h, :w], scale)
    if h < rows or w < cols:  # the partial blocks along the edges: exact means of what lies inside the image
        r_idx, c_idx = np.arange(0, rows, scale), np.arange(0, cols, scale)
        r_cnt, c_cnt = np.diff(np.append(r_idx, rows)), np.diff(np.append(c_idx, cols))
        if h < rows:
            strip = np.add.reduceat(arr[h:].astype(np.float64).sum(axis=0), c_idx)
            out[-1, :] = strip / (r_cnt[-1] * c_cnt)
        if w < cols:
            strip = np.add.reduceat(arr[:, w:].astype(np.float64).sum(axis=1), r_idx)
            out[:, -1] = strip / (r_cnt * c_cnt[-1])
    return out


def averaged_text(scale: int, reduced: tuple[int, ...], full: tuple[int, ...], how: str) -> str:
    """How an image was block averaged, for ``inspect``: '1/4: 489x461 block-averaged after a full decode of 1955x1841
    ``how``' (shapes as (rows, columns))."""
    (h, w), (rows, cols) = reduced, full
    return f"1/{scale}: {w}x{h} block-averaged after a full decode of {cols}x{rows} {how}"


def _halvings(arr: np.ndarray, scale: int) -> np.ndarray:
    """Block means of ``arr`` (each side a multiple of ``scale``) by repeated 2 x 2 area averaging."""
    def half(x: np.ndarray) -> np.ndarray:
        return cv2.resize(x, (x.shape[1] // 2, x.shape[0] // 2), interpolation=cv2.INTER_AREA)

    if arr.dtype == np.uint8:
        wide = arr.astype(np.uint16)
        np.left_shift(wide, 2, out=wide)
        x = half(wide).astype(np.float32)
        x *= 0.25
    elif arr.dtype in (np.uint16, np.int16):
        x = half(arr).astype(np.float32)
    else:  # wider integers and floats: float32 throughout, as the full-resolution path converts them
        x = half(np.ascontiguousarray(arr, dtype=np.float32))
    for _ in range(scale.bit_length() - 2):
        x = half(x)
    return x


def openjpeg_decoder() -> str | None:
    """'OpenJPEG X (libopenjp2)' when the system libopenjp2 is usable, else None."""
    version = openjpeg_version()
    return f"OpenJPEG {version} (libopenjp2)" if version else None


def _j2k_main_header(code: bytes) -> tuple[int, int, bool, int, tuple[int, int], bool]:
    """(decomposition levels, precision, signed, components, image origin, reversible 5/3 wavelet) from the COD and
    SIZ segments.

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
    reversible = True
    while pos + 4 <= len(code):
        marker = int.from_bytes(code[pos:pos + 2], "big")
        if marker == 0xFF90:  # SOT: end of the main header
            break
        length = int.from_bytes(code[pos + 2:pos + 4], "big")
        if length < 2:
            raise ReducedDecodeError(f"marker {marker:04X} with length {length}")
        if marker == 0xFF52 and pos + 4 + 9 < len(code):
            # COD: Scod, SGcod (4 bytes), then SPcod: decomposition levels, code-block width, height, style, and
            # the wavelet (1: reversible 5/3, 0: irreversible 9/7)
            levels = code[pos + 4 + 5]
            reversible = code[pos + 4 + 9] == 1
        pos += 2 + length
    if levels is None:
        raise ReducedDecodeError("no COD segment in the main header")
    return levels, (ssiz & 0x7F) + 1, bool(ssiz & 0x80), csiz, (yo, xo), reversible


_HEADER_BYTES = 1 << 16  # the SIZ and COD segments come first in the main header; 64 KiB holds them


def _head(parts: Sequence[bytes | bytearray | memoryview]) -> bytes:
    """The codestream's first bytes (up to ``_HEADER_BYTES``), joined across fragments only as far as needed."""
    out = bytearray()
    for part in parts:
        out += part[:_HEADER_BYTES - len(out)]
        if len(out) >= _HEADER_BYTES:
            break
    return bytes(out)


def decode_j2k_reduced(code: bytes | Sequence[bytes | bytearray | memoryview], *, rows: int, columns: int,
                       max_scale: float, correct: bool = True) -> ReducedPixels | None:
    """A bare JPEG 2000 codestream (one greyscale component; bytes, or its fragments in order) at the largest
    reduction <= ``max_scale`` (at most 1/8).

    None when no reduction applies (``max_scale`` < 2, no decomposition level to discard). The decoded size must
    be ``ceil(rows / scale)`` x ``ceil(columns / scale)``. With ``correct`` the result carries the filter that makes
    its samples area averages (`ReducedPixels.area_average`); without it, none (the samples as decoded).

    Raises:
        ReducedDecodeError: libopenjp2 unavailable, a codestream this path does not handle (several components,
            precision above 16 bits, an image origin other than 0), or a decoder error.
    """
    parts = [code] if isinstance(code, bytes | bytearray | memoryview) else list(code)
    levels, precision, signed, components, origin, reversible = _j2k_main_header(_head(parts))
    scale = scale_for(max_scale, min(1 << levels, MAX_J2K_SCALE))
    if scale == 1:
        return None
    if components != 1 or precision > 16 or origin != (0, 0):
        raise ReducedDecodeError(f"{components} component(s) of {precision} bits at origin {origin}: not handled")
    decoder = openjpeg_decoder()
    if decoder is None:
        raise ReducedDecodeError("the system libopenjp2 is not available")
    levels_used = scale.bit_length() - 1
    warnings: list[str] = []
    try:
        arr = decode_reduced(parts, levels_used, warnings)
    except OpenJpegError as exc:
        raise ReducedDecodeError(f"OpenJPEG: {' '.join(str(exc).split())[:200]}") from exc
    if arr.shape != reduced_shape((rows, columns), scale):
        raise ReducedDecodeError(f"decoded {arr.shape} at 1/{scale}, expected {reduced_shape((rows, columns), scale)}")
    if signed != (arr.dtype.kind == "i"):
        raise ReducedDecodeError(f"samples came back as {arr.dtype} for a {'signed' if signed else 'unsigned'} stream")
    kernel = area_kernel(reversible, scale) if correct else None
    return ReducedPixels(arr, scale, f"{decoder}, {levels_used} resolution level(s) discarded, "
                         f"{'5/3' if reversible else '9/7'} level made an area average", kernel,
                         tuple(decoder_notes(distinct_messages(warnings), "OpenJPEG")))


def area_kernel(reversible: bool, scale: int) -> np.ndarray:
    """The 4 x 4 filter (offsets -1..+2) that turns a JPEG 2000 resolution level 1/``scale`` into area averages."""
    return np.asarray(_AREA_KERNELS[(reversible, scale)], dtype=np.float32)


def decode_jpeg_reduced(data: bytes | np.ndarray, *, rows: int, columns: int, components: int, precision: int,
                        max_scale: float, exif_orientation: bool = True,
                        full_when_unreduced: bool = False) -> ReducedPixels | None:
    """An 8-bit greyscale JPEG (DCT-based, baseline or progressive) at 1/2, 1/4 or 1/8 by libjpeg's scaled IDCT.

    None when no reduction applies (``max_scale`` < 2), unless ``full_when_unreduced``: then the full image, by the
    same decoder (``scale`` 1). ``exif_orientation``: apply an EXIF orientation as OpenCV's full decode of a JPEG file
    does (a rotated image then fails the size check); a DICOM reader passes False, as DICOM decoders ignore EXIF.

    Raises:
        ReducedDecodeError: not one 8-bit component (lossless, 12-bit and colour JPEG are decoded in full),
            OpenCV cannot decode it, or the size is not ``ceil(size / scale)``.
    """
    scale = scale_for(max_scale, MAX_JPEG_SCALE)
    if scale == 1 and not full_when_unreduced:
        return None
    if components != 1 or precision != 8:
        raise ReducedDecodeError(f"{components} component(s) of {precision} bits: DCT scaling is used for 8-bit grey")
    buf = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    flags = _CV2_GREY[scale] | (0 if exif_orientation else cv2.IMREAD_IGNORE_ORIENTATION)
    try:
        with held_native_output() as held:
            arr = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ReducedDecodeError(f"OpenCV: {' '.join(str(exc).split())[:200]}") from exc
    if arr is None:
        raise ReducedDecodeError(f"OpenCV could not decode the JPEG at 1/{scale}")
    if arr.shape != reduced_shape((rows, columns), scale) or arr.dtype != np.uint8:
        raise ReducedDecodeError(f"decoded {arr.dtype} {arr.shape} at 1/{scale}, expected "
                                 f"{reduced_shape((rows, columns), scale)}")
    how = f"libjpeg DCT scaling 1/{scale}" if scale > 1 else "libjpeg, full resolution"
    return ReducedPixels(arr, scale, f"OpenCV {cv2.__version__} ({how})",
                         notes=tuple(decoder_notes(held.messages(), "libjpeg")))


# (reversible 5/3 wavelet, reduction) -> 4 x 4 filter, rows and columns at offsets -1..+2, from
# `python scripts/fit_j2k_area_kernels.py --limit 60` (the ieee lung images of ../shared/data, 59 usable, encoded
# lossless and at 10:1; one in five held out). RMS difference to the area average, in grey levels of 255, on the
# held-out images, before -> after the filter:
#   5/3 lossless 1/2: 2.465 -> 1.179
#   5/3 lossless 1/4: 4.732 -> 1.747
#   5/3 lossless 1/8: 7.215 -> 2.493
#   9/7 lossy    1/2: 1.770 -> 0.642
#   9/7 lossy    1/4: 3.484 -> 1.327
#   9/7 lossy    1/8: 5.443 -> 1.848
_AREA_KERNELS: dict[tuple[bool, int], tuple[tuple[float, ...], ...]] = {
    (True, 2): (
        (+0.01349, -0.01872, +0.00431, +0.00245),
        (-0.02724, +0.56735, +0.21323, -0.02506),
        (-0.00218, +0.21970, +0.08867, -0.01412),
        (-0.00214, -0.01552, -0.00844, +0.00422)),
    (True, 4): (
        (+0.00897, -0.00868, -0.00293, +0.00099),
        (-0.01228, +0.38873, +0.24422, -0.01568),
        (+0.00126, +0.26059, +0.17375, -0.00122),
        (-0.00895, -0.01435, -0.01288, -0.00157)),
    (True, 8): (
        (+0.00788, -0.01537, -0.00269, -0.00117),
        (-0.01045, +0.31915, +0.27186, -0.01414),
        (+0.00459, +0.25628, +0.23050, -0.01168),
        (-0.00181, -0.02514, -0.00111, -0.00670)),
    (False, 2): (
        (+0.02692, -0.08335, -0.00655, +0.00930),
        (-0.08256, +0.71758, +0.23336, -0.06316),
        (-0.01541, +0.25044, +0.07940, -0.00250),
        (+0.00075, -0.04754, -0.01893, +0.00227)),
    (False, 4): (
        (+0.02546, -0.08128, -0.03704, +0.02103),
        (-0.08248, +0.53593, +0.30886, -0.07938),
        (-0.03344, +0.32759, +0.22324, -0.02529),
        (+0.01372, -0.07908, -0.03970, +0.00187)),
    (False, 8): (
        (+0.01578, -0.07814, -0.04778, +0.01331),
        (-0.07407, +0.45483, +0.34770, -0.06948),
        (-0.04161, +0.34125, +0.28581, -0.04728),
        (+0.01711, -0.08183, -0.04263, +0.00703)),
}
