"""Apply a PreprocessRecipe to an Image2D, and map model-resolution arrays back to the image.

The same functions run in training (``cxrtriage.train``) and at inference, so a model sees
at inference exactly what it saw in training.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from cxrtriage.preprocess.recipe import GeometryMode, IntensityMode, PreprocessRecipe, ResizeMode, VoiMode
from cxrtriage.preprocess.stats import percentiles
from cxrtriage.types import FloatArray, Image2D

if TYPE_CHECKING:
    from scipy import sparse

# SciPy is imported where it is used, not with this module. Why: every process that runs the pipeline imports this
# module, and ``scipy.sparse`` + ``scipy.ndimage`` cost ~0.19 s of CPU to import, a tenth of a plain ``cxrtriage
# predict`` of a few files, in a main process that never resizes an image (the decode workers do: their forkserver
# imports ``scipy.sparse`` once for all of them, `cxrtriage.pipeline.startup.WORKER_PRELOAD`).


@dataclass(frozen=True, slots=True)
class Geometry:
    """How the original image maps onto the square model input.

    ``crop`` is (y0, x0, h, w) of the region of the original image that is used; ``placed`` is
    (y0, x0, h, w) of where that region lands, resized, inside the ``size`` x ``size`` input.
    """

    original_shape: tuple[int, int]
    crop: tuple[int, int, int, int]
    placed: tuple[int, int, int, int]
    size: int


@dataclass(frozen=True, slots=True)
class ModelInput:
    """The exact float32 array [1, size, size] a model receives, with its geometry."""

    array: FloatArray
    geometry: Geometry


def plan_geometry(shape: tuple[int, int], recipe: PreprocessRecipe) -> Geometry:
    """Decide which part of an image of ``shape`` goes where in the model input."""
    h, w = shape
    s = recipe.size
    if recipe.geometry is GeometryMode.CENTER_CROP:
        side = min(h, w)
        # torchxrayvision's offsets (n // 2 - side // 2): one pixel further than (n - side) // 2 when n is even and
        # side odd, and models trained with its crop expect exactly its pixels
        crop = (h // 2 - side // 2, w // 2 - side // 2, side, side)
        placed = (0, 0, s, s)
    elif recipe.geometry is GeometryMode.STRETCH:
        crop = (0, 0, h, w)
        placed = (0, 0, s, s)
    else:  # LETTERBOX
        crop = (0, 0, h, w)
        scale = s / max(h, w)
        ph, pw = max(1, round(h * scale)), max(1, round(w * scale))
        placed = ((s - ph) // 2, (s - pw) // 2, ph, pw)
    return Geometry(original_shape=(h, w), crop=crop, placed=placed, size=s)


def area_weights(edges: np.ndarray, n_in: int) -> sparse.csr_matrix:
    """The area-average resampling of one axis as a sparse matrix [len(edges) - 1, n_in]: output pixel i is the mean
    of the input over its footprint [edges[i], edges[i+1]), where input pixel k covers [k, k + 1); each entry is the
    share of the footprint that pixel covers (0 <= edges, ascending, last edge <= n_in).

    Applied as ``rows @ image @ columns.T``, this is OpenCV's INTER_AREA for a shrink (edges ``linspace(0, n_in,
    n_out + 1)``) to float32 rounding, and the exact footprint average when the edges fall inside pixels (a crop
    that starts inside a reduced pixel, `_region_resized`).
    """
    lo, hi = edges[:-1], edges[1:]
    first = np.floor(lo).astype(np.intp)
    taps = int(np.max(np.ceil(hi) - first)) if len(lo) else 1
    k = first[:, None] + np.arange(max(taps, 1))[None, :]
    overlap = np.minimum(hi[:, None], k + 1.0) - np.maximum(lo[:, None], k.astype(np.float64))
    keep = (overlap > 0) & (k < n_in)
    share = overlap / (hi - lo)[:, None]
    rows = np.broadcast_to(np.arange(len(lo))[:, None], k.shape)
    from scipy import sparse  # see the top of the module

    return sparse.csr_matrix((share[keep].astype(np.float32), (rows[keep], k[keep])), shape=(len(lo), n_in))


@functools.lru_cache(maxsize=64)
def _footprint_weights(start: int, length: int, n_out: int, scale: int, offset: int, n_in: int) -> sparse.csr_matrix:
    """`area_weights` of ``n_out`` footprints evenly over full pixels [start, start + length), on pixels decoded at
    1/``scale`` of which the first passed is ``offset``. Cached: the images of one scanner share their geometry, and
    building the matrix costs ~0.35 ms per axis on a 2k radiograph (as much as applying it)."""
    return area_weights(np.linspace(start, start + length, n_out + 1) / scale - offset, n_in)


def _area_resize(arr: FloatArray, rows: sparse.csr_matrix, cols: sparse.csr_matrix) -> FloatArray:
    # Sparse products instead of OpenCV's INTER_AREA: the same averages at ~0.2 of its CPU on a 2-3k px radiograph
    # (1955x1841 -> 224x211: 4.1 -> 0.8 ms; OpenCV's general area path does not vectorise its per-row weights)
    out = cols @ np.ascontiguousarray(rows @ arr).T
    return np.ascontiguousarray(out.T, dtype=np.float32)


def _resize(arr: FloatArray, out_hw: tuple[int, int]) -> FloatArray:
    oh, ow = out_hw
    if arr.shape == (oh, ow):
        return arr.astype(np.float32, copy=False)
    shrinking = oh <= arr.shape[0] and ow <= arr.shape[1]
    if shrinking and arr.dtype == np.float32:
        h, w = arr.shape
        return _area_resize(arr, _footprint_weights(0, h, oh, 1, 0, h), _footprint_weights(0, w, ow, 1, 0, w))
    return _opencv_resize(arr, out_hw)


def _opencv_resize(arr: FloatArray, out_hw: tuple[int, int]) -> FloatArray:
    """OpenCV in one pass: INTER_AREA to shrink, INTER_LINEAR to enlarge."""
    oh, ow = out_hw
    if arr.shape == (oh, ow):
        return arr.astype(np.float32, copy=False)
    interp = cv2.INTER_AREA if oh <= arr.shape[0] and ow <= arr.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(arr, (ow, oh), interpolation=interp).astype(np.float32, copy=False)


def skimage_resize(arr: FloatArray, out_hw: tuple[int, int]) -> FloatArray:
    """``skimage.transform.resize(arr, out_hw, mode="constant", preserve_range=True)`` for a float32 image, written
    with the SciPy calls scikit-image makes (so that the runtime needs no scikit-image): Gaussian anti-aliasing
    with sigma (factor - 1) / 2 per downsampled axis, bilinear ``zoom`` on the pixel grid, borders padded with 0, and
    the result clipped to the input's range (widened to 0 where the zero border reaches the output)."""
    src = np.asarray(arr, dtype=np.float32)
    factors = np.divide(src.shape, out_hw)
    if src.shape == out_hw:
        return src.copy()
    from scipy import ndimage  # see the top of the module

    filtered = src
    if np.any(factors > 1):
        sigma = np.maximum(0, (factors - 1) / 2)
        filtered = ndimage.gaussian_filter(src, sigma, cval=0.0, mode="grid-constant")
    out = ndimage.zoom(filtered, [1 / f for f in factors], order=1, mode="grid-constant", cval=0.0, grid_mode=True)
    lo, hi = float(src.min()), float(src.max())
    if not lo <= 0.0 <= hi and float(out.min()) <= 0.0 <= float(out.max()):
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    clipped: FloatArray = np.clip(out, np.float32(lo), np.float32(hi)).astype(np.float32, copy=False)
    return clipped


def _to_unit(region: FloatArray, image: Image2D, recipe: PreprocessRecipe) -> FloatArray:
    """Map raw (resized) pixel values to display units in [0, 1]."""
    if recipe.voi is VoiMode.IF_PRESENT and image.voi is not None:
        return image.voi.apply(region)
    if recipe.intensity is IntensityMode.NOMINAL:
        lo, hi = image.value_range
    else:
        lo, hi = percentiles(region, recipe.percentiles)
    if hi <= lo:  # a flat image: nothing to scale, keep it mid-grey rather than divide by zero
        return np.full(region.shape, 0.5, dtype=np.float32)
    out = (region - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    return np.clip(out, 0.0, 1.0, out=out).astype(np.float32, copy=False)


def max_scale(shape: tuple[int, int], recipe: PreprocessRecipe) -> float:
    """How many times smaller per side an image of ``shape`` may be decoded and still fill the model input of
    ``recipe`` without upsampling: the crop region over the size it is resized to (>= 1)."""
    geo = plan_geometry(shape, recipe)
    _, _, ch, cw = geo.crop
    _, _, ph, pw = geo.placed
    return max(1.0, min(ch / ph, cw / pw))


@dataclass(frozen=True, slots=True)
class PixelNeeds:
    """What the consumers of a decoded image need of its pixels; the decode step asks it how far it may reduce.

    ``recipes``: the model inputs made from the image (classifier, segmenter); ``oversample``: the decoded image
    keeps at least this many times a model input's pixels per side, so that the area resize to the model input
    still averages over several decoded pixels; ``min_long_side``: pictures drawn at the image's own geometry
    (heat-map overlays) need at least this many pixels on the long side (0: none); ``full``: some consumer needs
    every pixel (no reduction at all).

    Why ``oversample`` is 2: decoded at exactly the model's size, the 486 NIH images (512 px, JPEG 2000 at 1/2, then
    256 -> 224) scored up to 0.084 apart from full decoding (AUROC up to 0.004); with at least twice the pixels
    (and JPEG 2000 levels made area averages, `cxrtriage.io.reduced`) the same images at 1024 px and the RG1 chest
    score within 0.0082 (see benchmarks/agreement.py and the README). Measured again with the area filters and the
    exact footprint averages: one times the pixels (``oversample`` 1) still drifts too far on the NIH images at 1024 px
    (JPEG 2000 at 1/4, 256 -> 224: up to 0.033, 99th percentile 0.010), although the RG1 chest at 1/8 stays within
    0.0065.
    """

    recipes: tuple[PreprocessRecipe, ...]
    min_long_side: int = 0
    full: bool = False
    oversample: float = 2.0

    def __call__(self, shape: tuple[int, int]) -> float:
        """The largest reduction per side of an image of ``shape`` (rows, columns) that every consumer accepts.

        A recipe that reproduces another library's resize (``resize`` "skimage") needs every pixel to do so."""
        if self.full or not self.recipes or any(r.resize is ResizeMode.SKIMAGE for r in self.recipes):
            return 1.0
        limit = min(max_scale(shape, r) for r in self.recipes) / max(self.oversample, 1.0)
        if self.min_long_side > 0:
            limit = min(limit, max(shape) / self.min_long_side)
        return max(1.0, limit)


def _pixel_region(image: Image2D, crop: tuple[int, int, int, int]) -> FloatArray:
    """The pixels of ``crop`` (full-image coordinates) in ``image.pixels``, which may be reduced by ``image.scale``.

    A reduced pixel k covers full pixels [k*s, (k+1)*s): crop edges are rounded to the nearest reduced pixel, and a
    crop reaching the image's far edge keeps the last (partial) reduced row or column.
    """
    y0, x0, ch, cw = crop
    if image.scale == 1:
        return image.pixels[y0 : y0 + ch, x0 : x0 + cw]
    s = image.scale
    (h, w), (rh, rw) = image.shape, image.pixels.shape
    ry0, rx0 = min(round(y0 / s), rh - 1), min(round(x0 / s), rw - 1)
    ry1 = rh if y0 + ch >= h else max(ry0 + 1, min(rh, round((y0 + ch) / s)))
    rx1 = rw if x0 + cw >= w else max(rx0 + 1, min(rw, round((x0 + cw) / s)))
    return image.pixels[ry0:ry1, rx0:rx1]


def _region_resized(image: Image2D, crop: tuple[int, int, int, int], out_hw: tuple[int, int], *,
                    opencv_area: bool = False) -> FloatArray:
    """The pixels of ``crop`` (full-image coordinates) resized to ``out_hw``.

    Shrinking a full decode: OpenCV's INTER_AREA result (to float32 rounding; bit for bit with ``opencv_area``, see
    `to_model_input`); enlarging: OpenCV's linear resize.
    From pixels decoded at 1/``scale``
    (each the area average of ``scale`` x ``scale`` full pixels, `cxrtriage.io.reduced`): the exact area average
    of each output pixel's footprint on the full image, edges at fractional reduced positions included, so the
    crop is not rounded to whole reduced pixels (up to ``scale``/2 full pixels per edge, which moved scores by up to
    0.0066 on the RG1 chest at 1/4) and the last, partial reduced row or column counts for what it covers.
    """
    y0, x0, ch, cw = crop
    oh, ow = out_hw
    s = image.scale
    if opencv_area and s == 1:
        return _opencv_resize(image.pixels[y0 : y0 + ch, x0 : x0 + cw], out_hw)
    if oh > ch / s or ow > cw / s:
        # enlarging (a small image; never chosen by PixelNeeds for a reduced one): OpenCV on the pixels at hand, crop
        # edges rounded to the nearest reduced pixel
        return _resize(_pixel_region(image, crop), out_hw)
    # Each (reduced) pixel stands for a constant over the full pixels it covers, so an output pixel's footprint (its
    # edges at fractional reduced positions) is averaged exactly by the share of it each pixel covers; a footprint
    # ending inside the last, partial reduced pixel stops where the image does. Whole rows are passed (contiguous,
    # nothing copied): columns outside the crop get no weight.
    rows = slice(int(y0 // s), min(image.pixels.shape[0], -(-(y0 + ch) // s)))
    region = image.pixels[rows].astype(np.float32, copy=False)
    return _area_resize(region, _footprint_weights(y0, ch, oh, s, rows.start, region.shape[0]),
                        _footprint_weights(x0, cw, ow, s, 0, region.shape[1]))


def to_model_input(image: Image2D, recipe: PreprocessRecipe, *, opencv_area: bool = False) -> ModelInput:
    """Turn ``image`` into the [1, size, size] float32 array described by ``recipe``.

    The geometry is planned on the full image (``image.shape``), so it maps model outputs back onto the full
    image also when the pixels were decoded at a reduced resolution.

    ``opencv_area`` shrinks a full decode with OpenCV's one-pass INTER_AREA, the resize the shipped models were
    trained with. The training recipes use it (`cxrtriage.train`), so that they reproduce those models bit for bit:
    the default, two sparse products, gives the same averages to float32 rounding (at most ~7e-7 on the [-1, 1]
    input, which changes no score) at ~0.2 of the CPU, but after the float16 training cache ~1 input pixel in 10,000
    lands one float16 step apart, and that is enough for a training run to take another path.
    """
    geo = plan_geometry(image.shape, recipe)
    py, px, ph, pw = geo.placed
    lo, hi = recipe.output_range
    if recipe.resize is ResizeMode.SKIMAGE:  # torchxrayvision's order: scale, then resize the scaled values
        unit = _to_unit(_pixel_region(image, geo.crop).astype(np.float32, copy=False), image, recipe)
        scaled = skimage_resize(unit * np.float32(hi - lo) + np.float32(lo), (ph, pw))
        canvas = np.full((recipe.size, recipe.size), recipe.pad_value * (hi - lo) + lo, dtype=np.float32)
        canvas[py : py + ph, px : px + pw] = scaled
        return ModelInput(array=canvas[None, :, :], geometry=geo)
    region = _region_resized(image, geo.crop, (ph, pw), opencv_area=opencv_area)
    unit = _to_unit(region, image, recipe)
    canvas = np.full((recipe.size, recipe.size), recipe.pad_value, dtype=np.float32)
    canvas[py : py + ph, px : px + pw] = unit
    canvas = canvas * np.float32(hi - lo) + np.float32(lo)
    return ModelInput(array=canvas[None, :, :].astype(np.float32, copy=False), geometry=geo)


def to_original(values: FloatArray, geometry: Geometry, *, fill: float = 0.0, nearest: bool = False) -> FloatArray:
    """Map a [size, size] array at model-input resolution back onto the original image grid.

    Pixels of the original image that the model never saw (cropped away) get ``fill``.
    Use ``nearest=True`` for label maps (segmentation masks).
    """
    if values.shape != (geometry.size, geometry.size):
        raise ValueError(f"expected a {geometry.size}x{geometry.size} array, got {values.shape}")
    py, px, ph, pw = geometry.placed
    y0, x0, ch, cw = geometry.crop
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    inner = np.ascontiguousarray(values[py : py + ph, px : px + pw], dtype=np.float32)
    back = cv2.resize(inner, (cw, ch), interpolation=interp)
    out = np.full(geometry.original_shape, fill, dtype=np.float32)
    out[y0 : y0 + ch, x0 : x0 + cw] = back
    return out


def from_original(values: FloatArray, geometry: Geometry, *, nearest: bool = False) -> FloatArray:
    """Map an array on the original grid (e.g. a lung mask) to model-input resolution."""
    y0, x0, ch, cw = geometry.crop
    py, px, ph, pw = geometry.placed
    region = np.ascontiguousarray(values[y0 : y0 + ch, x0 : x0 + cw], dtype=np.float32)
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    small = cv2.resize(region, (pw, ph), interpolation=interp)
    out = np.zeros((geometry.size, geometry.size), dtype=np.float32)
    out[py : py + ph, px : px + pw] = small
    return out
