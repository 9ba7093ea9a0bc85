"""Overlay PNGs a clinician can read: the radiograph, the same with the heat map, a colour bar and the facts.

Layout (RGB, at the ORIGINAL image geometry, downscaled only for the PNG when the long side is
above ``max_side``, keeping the aspect ratio): a text band (finding, calibrated score, threshold
and operating point, model name + version, method, notes) above two panels — the plain
radiograph in grey (display window = percentiles of its pixels) and the same radiograph with the
heat map (turbo colour map) blended where the map is above ``floor``, with the outline of the lung fields when they
are known (``outline``: the region the share of evidence outside the lungs is measured against, see
``cxrtriage.explain.gating``) — then a 0..1 colour bar and the line "Decision support only - not a diagnosis". The raw
map is saved beside it as ``.npy``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from cxrtriage.errors import OutputError
from cxrtriage.explain.base import Heatmap
from cxrtriage.explain.gating import SHORTCUT_MARK
from cxrtriage.explain.registry import METHODS
from cxrtriage.files import atomic_write, fit_name, safe_name
from cxrtriage.model.manifest import ModelManifest
from cxrtriage.preprocess.stats import percentiles as pixel_percentiles
from cxrtriage.types import FloatArray, Image2D

BoolArray = NDArray[np.bool_]
DISCLAIMER = "Decision support only - not a diagnosis"
OPERATING_POINTS = {"balanced": "balanced (Youden) operating point", "rule_out": "rule-out (high-sensitivity) operating point"}
UInt8Image = NDArray[np.uint8]


REPORTED_ONLY = "reported only"


def reported_only_note(population: str) -> str:
    """The note of a map whose label is not validated for the patient's population: it does not move the priority."""
    return f"{REPORTED_ONLY}: not validated for the {population} population, so it does not move the priority"


@dataclass(frozen=True, slots=True)
class OverlayText:
    """The facts printed on an overlay."""

    finding: str
    score: float | None
    threshold: float | None
    operating_point: str
    model: str
    method: str
    notes: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        score = "n/a" if self.score is None else f"{self.score:.3f}"
        if self.threshold is None:
            thr = "threshold: none in the model manifest"
        else:
            above = self.score is not None and self.score >= self.threshold
            reported = any(n.startswith(REPORTED_ONLY) for n in self.notes)
            verdict = ("above, " + REPORTED_ONLY if reported else "FLAGGED") if above else "not flagged"
            thr = f"threshold {self.threshold:.3f} at the {self.operating_point} -> {verdict}"
        out = [
            f"Finding: {self.finding}    calibrated score {score}    {thr}",
            f"Model: {self.model}    Method: {self.method}",
        ]
        out += [f"Note: {n}" for n in self.notes]
        return out


def overlay_text(manifest: ModelManifest, heatmap: Heatmap, *, operating_point: str = "balanced") -> OverlayText:
    """Overlay facts from the model manifest (thresholds, name, version) and the heat map."""
    if operating_point not in OPERATING_POINTS:
        raise ValueError(f"operating point must be one of {sorted(OPERATING_POINTS)}, got {operating_point!r}")
    t = manifest.thresholds.get(heatmap.label)
    method = METHODS[heatmap.method].title if heatmap.method in METHODS else heatmap.method
    return OverlayText(
        finding=heatmap.label,
        score=heatmap.score,
        threshold=None if t is None else getattr(t, operating_point).threshold,
        operating_point=OPERATING_POINTS[operating_point],
        model=f"{manifest.name} {manifest.version} (sha256 {manifest.short_sha})",
        method=method,
        notes=heatmap.notes,
    )


def display_grey(pixels: FloatArray, percentiles: tuple[float, float] = (0.5, 99.5)) -> FloatArray:
    """Radiograph pixels (MONOCHROME2 sense) windowed to [0, 1] between two percentiles."""
    lo, hi = pixel_percentiles(pixels, percentiles)
    if hi <= lo:
        return np.full(pixels.shape, 0.5, np.float32)
    scaled: FloatArray = np.clip((pixels.astype(np.float32) - lo) / (hi - lo), 0.0, 1.0)
    return scaled


def colorize(values: FloatArray) -> UInt8Image:
    """Turbo colour map of a [0, 1] map → RGB uint8."""
    u8 = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    rgb: UInt8Image = cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB)
    return rgb


def blend(grey: FloatArray, values: FloatArray, *, floor: float = 0.2, alpha: float = 0.5) -> UInt8Image:
    """Grey radiograph with the coloured map blended in where the map exceeds ``floor``.

    The opacity ramps from 0 at ``floor`` to ``alpha`` at ``floor + 0.1`` so the edge of the
    coloured region is not a hard line; below ``floor`` the radiograph is untouched.
    """
    base = np.repeat((grey * 255.0)[:, :, None], 3, axis=2)
    a = alpha * np.clip((values - floor) / 0.1, 0.0, 1.0)[:, :, None]
    out = (1.0 - a) * base + a * colorize(values).astype(np.float32)
    blended: UInt8Image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return blended


def _font(px: int):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow built without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: float) -> list[str]:  # type: ignore[no-untyped-def]
    """``text`` in lines that fit ``width`` pixels in ``font``, broken at spaces (a word longer than a line is cut
    between characters). Why: on a small image (a 224 px Kermany chest) the canvas is narrower than the facts, and
    the end of a line (the operating point, "POSSIBLE SHORTCUT", "reported only") fell off the picture."""
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        candidate = f"{line} {word}" if line else word
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width and len(word) > 1:
            cut = max(1, next((i for i in range(len(word), 0, -1) if font.getlength(word[:i]) <= width), 1))
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    lines.append(line)
    return lines


def _colour_bar(height: int, width: int, font_px: int, floor: float) -> UInt8Image:
    """Vertical 0..1 colour bar with ticks; the part below ``floor`` (not drawn on the map) is dimmed."""
    from PIL import Image, ImageDraw

    bar_w = max(12, width // 4)
    pad = font_px
    ramp = np.linspace(1.0, 0.0, height - 2 * pad, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    rgb = colorize(ramp).astype(np.float32)
    rgb[ramp < floor] *= 0.3
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb.astype(np.uint8)), (4, pad))
    draw = ImageDraw.Draw(canvas)
    font = _font(font_px)
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = pad + round((1.0 - t) * (height - 2 * pad - 1))
        draw.line([(4 + bar_w, y), (4 + bar_w + 6, y)], fill=(255, 255, 255), width=2)
        draw.text((4 + bar_w + 9, y - font_px // 2), f"{t:g}", font=font, fill=(255, 255, 255))
    return np.asarray(canvas)


def draw_outline(rgb: UInt8Image, region: BoolArray) -> UInt8Image:
    """``rgb`` with the outer border of ``region`` (resized to it, nearest) drawn as a thin white line."""
    h, w = rgb.shape[:2]
    small = cv2.resize(region.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out: UInt8Image = np.ascontiguousarray(rgb).copy()
    cv2.drawContours(out, contours, -1, (255, 255, 255), max(1, round(max(h, w) / 400)), lineType=cv2.LINE_AA)
    return out


def render_overlay(
    image: Image2D,
    heatmap: Heatmap,
    text: OverlayText,
    *,
    max_side: int = 1024,
    floor: float = 0.2,
    alpha: float = 0.5,
    outline: BoolArray | None = None,
) -> UInt8Image:
    """The overlay as an RGB uint8 array (see the module docstring for the layout).

    ``outline``: a region on the original grid (the lung fields) whose border is drawn on the map panel.
    """
    from PIL import Image, ImageDraw

    original = heatmap.original
    if original is None:
        raise OutputError(f"{image.source.path}: no map for '{heatmap.label}' ({heatmap.reason}); nothing to draw")
    if original.shape != image.shape:
        raise OutputError(f"{image.source.path}: map shape {original.shape} differs from the image {image.shape}")
    h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    dh, dw = max(1, round(h * scale)), max(1, round(w * scale))
    grey = display_grey(image.pixels)  # the pixels may be a reduced resolution of the image (Image2D.scale)
    values = original
    if grey.shape != (dh, dw):
        shrink = dh <= grey.shape[0] and dw <= grey.shape[1]
        grey = cv2.resize(grey, (dw, dh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR).astype(np.float32)
    if (dh, dw) != (h, w):
        values = np.clip(cv2.resize(values, (dw, dh), interpolation=cv2.INTER_AREA), 0.0, 1.0).astype(np.float32)
    left = np.repeat(np.clip(np.rint(grey * 255.0), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)
    right = blend(grey, values, floor=floor, alpha=alpha)
    if outline is not None:
        if outline.shape != image.shape:
            raise OutputError(f"{image.source.path}: outline shape {outline.shape} differs from the image {image.shape}")
        right = draw_outline(right, outline)
    font_px = max(14, min(28, round(max(dh, 2 * dw) / 55)))
    gap = max(4, font_px // 2)
    bar = _colour_bar(dh, 5 * font_px, font_px, floor)
    total_w = dw * 2 + gap * 2 + bar.shape[1]
    font, small = _font(font_px), _font(max(12, font_px - 3))
    line_h, small_h = round(font_px * 1.35), round(max(12, font_px - 3) * 1.35)
    width = total_w - 2 * gap
    rows: list[tuple[str, tuple[int, int, int], bool]] = []  # (text, colour, small font)
    for i, line in enumerate(text.lines()):
        colour = (255, 255, 255) if i == 0 else (255, 165, 0) if SHORTCUT_MARK in line else (210, 210, 210)
        rows += [(part, colour, False) for part in _wrap(line, font, width)]
    legend = (f"Left: radiograph. Right: {text.method} map, relative evidence 0..1 (colour bar); "
              f"drawn where > {floor:g} (dimmed part of the bar)")
    legend += "; white line: the lung fields." if outline is not None else "."
    rows += [(part, (170, 170, 170), True) for part in _wrap(legend, small, width)]
    band_h = sum(small_h if is_small else line_h for _, _, is_small in rows) + gap
    footer = _wrap(DISCLAIMER, font, width)
    foot_h = round(font_px * 1.8) + (len(footer) - 1) * line_h
    canvas = Image.new("RGB", (total_w, band_h + dh + foot_h), (0, 0, 0))
    canvas.paste(Image.fromarray(left), (0, band_h))
    canvas.paste(Image.fromarray(right), (dw + gap, band_h))
    canvas.paste(Image.fromarray(bar), (2 * dw + 2 * gap, band_h))
    draw = ImageDraw.Draw(canvas)
    y = gap // 2
    for part, colour, is_small in rows:
        draw.text((gap, y), part, font=small if is_small else font, fill=colour)
        y += small_h if is_small else line_h
    y = band_h + dh + (round(font_px * 1.8) - font_px) // 2
    for part in footer:
        draw.text((gap, y), part, font=font, fill=(255, 215, 0))
        y += line_h
    return np.asarray(canvas)


def encode_picture(rgb: UInt8Image, path: Path, *, quality: int = 90) -> bytes:
    """``rgb`` encoded as ``path``'s suffix says: PNG (lossless) or JPEG (``.jpg``/``.jpeg``, ``quality``)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    ok, buf = cv2.imencode(".jpg" if jpeg else ".png", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality] if jpeg else [])
    if not ok:
        raise OutputError(f"{path}: OpenCV could not encode the overlay as {'JPEG' if jpeg else 'PNG'}")
    return bytes(buf.tobytes())


def save_heatmap(
    png_path: Path,
    image: Image2D,
    heatmap: Heatmap,
    text: OverlayText,
    *,
    max_side: int = 1024,
    floor: float = 0.2,
    save_npy: bool = True,
    compact_npy: bool = False,
    outline: BoolArray | None = None,
    npy_max_side: int | None = None,
) -> tuple[Path, Path | None]:
    """Write the overlay picture (PNG, or JPEG when ``png_path`` ends in ``.jpg``) and, beside it (same stem,
    ``.npy``), the map at the original geometry.

    The ``.npy`` holds ``heatmap.original``: float32 [H, W] in [0, 1], exactly what is drawn (4 bytes per
    image pixel: 14 MB for a 1955 x 1841 radiograph; ``save_npy=False`` skips it). ``compact_npy`` (used by
    ``predict --heatmaps``, where thousands of maps add up) stores it as float16, downscaled with the aspect ratio
    kept to at most ``npy_max_side`` pixels on the long side (default ``max_side``); resize it to the image size to
    overlay it. The maps are smooth (a CAM has the model's feature-map resolution, 7 x 7 for a 224 px input), so a
    model-input-sized copy (224 px: 95 KB) keeps what they hold. ``outline``: see ``render_overlay``.
    """
    rgb = render_overlay(image, heatmap, text, max_side=max_side, floor=floor, outline=outline)
    png_path = Path(png_path)
    npy_path = png_path.with_suffix(".npy")
    atomic_write(png_path, encode_picture(rgb, png_path))
    if save_npy:
        assert heatmap.original is not None
        raw: np.ndarray = heatmap.original
        if compact_npy:
            h, w = raw.shape
            scale = (npy_max_side or max_side) / max(h, w)
            if scale < 1.0:
                raw = cv2.resize(raw, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        buf = io.BytesIO()
        np.save(buf, raw.astype(np.float16 if compact_npy else np.float32))
        atomic_write(npy_path, buf.getvalue())
    return png_path, (npy_path if save_npy else None)


def heatmap_filename(stem: str, label: str, method: str, suffix: str = ".png") -> str:
    """``<stem>__<label>__<method>.png`` (or ``suffix``): the overlay name used by `explain` and `predict --heatmaps`.

    The name always fits the file system (``fit_name``): a long stem is cut first (with a hash, so names stay
    unique), keeping ``__<label>__<method>`` whole for the report to read the finding and the method from.
    """
    return fit_name(safe_name(stem), f"__{safe_name(label)}__{safe_name(method)}{suffix}")


def write_overlays(
    out_dir: Path,
    stem: str,
    image: Image2D,
    heatmaps: Sequence[Heatmap],
    manifest: ModelManifest,
    *,
    operating_point: str = "balanced",
    max_side: int = 1024,
    save_npy: bool = True,
    compact_npy: bool = False,
    outline: BoolArray | None = None,
    npy_max_side: int | None = None,
    suffix: str = ".png",
) -> list[Path]:
    """Write the overlay picture (+ .npy unless ``save_npy`` is false) of every non-empty map of one image.

    ``compact_npy``, ``npy_max_side``: see ``save_heatmap``; ``outline``: see ``render_overlay``; ``suffix``: ``.png``
    or ``.jpg`` (JPEG, quality 90).

    Returns the picture paths.

    Empty maps ("no map") are skipped: nothing is drawn for them.
    """
    written = []
    for hm in heatmaps:
        if hm.empty:
            continue
        png, _ = save_heatmap(Path(out_dir) / heatmap_filename(stem, hm.label, hm.method, suffix), image, hm,
                              overlay_text(manifest, hm, operating_point=operating_point), max_side=max_side,
                              save_npy=save_npy, compact_npy=compact_npy, npy_max_side=npy_max_side, outline=outline)
        written.append(png)
    return written
