"""Pictures for reports: the source image as a viewer shows it, lung-mask outlines, overlays and burned-in legends."""

from __future__ import annotations

import base64
import logging
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from cxrtriage.errors import InputError
from cxrtriage.io.raster import decode_file
from cxrtriage.preprocess.stats import percentiles
from cxrtriage.types import Image2D

log = logging.getLogger(__name__)

U8 = NDArray[np.uint8]
# BGR→RGB is done at the edges; every array here is RGB uint8 [H, W, 3] or grey uint8 [H, W].
# Map values below this are not drawn (as in the explain overlays): the SC and the report's map figures.
MAP_FLOOR = 0.2
MASK_COLOURS: tuple[tuple[int, int, int], ...] = ((0, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255))


def _u8(a: Any) -> U8:
    return np.asarray(a, dtype=np.uint8)


def display_image(image: Image2D) -> U8:
    """``image`` as a viewer shows it: grey uint8, dense = bright.

    The VOI window/LUT the file carries is applied to the stored values, else the 0.5-99.5 percentile window;
    the result is stretched to the full 8 bits, then inverted for MONOCHROME1 (and PresentationLUTShape INVERSE).
    """
    mirror = image.voi.mirror if image.voi is not None else None
    if mirror is None and image.dicom is not None and image.dicom.photometric_interpretation == "MONOCHROME1":
        mirror = image.value_range[0] + image.value_range[1]  # how cxrtriage.io inverted it
    # Window the stored values (the reader mirrored MONOCHROME1 pixels), invert last: the way a viewer does it.
    values = image.pixels if mirror is None else np.float32(mirror) - image.pixels
    window = None
    if image.voi is not None:
        values = replace(image.voi, mirror=None).apply(values)
        window = (float(values.min()), float(values.max()))
    out = _to_u8(values, window=window)
    return _u8(255 - out) if mirror is not None else out


def _to_u8(values: NDArray[np.float32], window: tuple[float, float] | None) -> U8:
    if window is None:
        lo, hi = percentiles(values, (0.5, 99.5))
    else:
        lo, hi = window
    if hi <= lo:
        hi = lo + 1.0
    return _u8(np.clip((values - lo) * (255.0 / (hi - lo)), 0, 255))


def read_png_rgb(path: Path) -> U8:
    """An overlay picture as it was drawn (RGB uint8); transparency is flattened onto black."""
    o = decode_file(path, cv2.IMREAD_UNCHANGED)  # not cv2.imread: it crashes on a name that is not UTF-8
    if o is None:
        raise InputError(f"{path}: overlay PNG cannot be read")
    if o.dtype != np.uint8:
        o = np.clip(o.astype(np.float32) * (255.0 / max(float(o.max()), 1.0)), 0, 255).astype(np.uint8)
    if o.ndim == 2:
        return _u8(cv2.cvtColor(o, cv2.COLOR_GRAY2RGB))
    rgb = cv2.cvtColor(o[:, :, :3], cv2.COLOR_BGR2RGB)
    if o.shape[2] == 4:
        rgb = (rgb.astype(np.float32) * (o[:, :, 3:4].astype(np.float32) / 255.0)).astype(np.uint8)
    return _u8(rgb)


def read_map(path: Path, shape: tuple[int, int]) -> NDArray[np.float32]:
    """A saved explanation map (.npy, float in [0, 1] on the original image grid), resized to ``shape``."""
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: explanation map cannot be read ({exc})") from exc
    if values.ndim != 2 or not np.issubdtype(values.dtype, np.floating):
        raise InputError(f"{path}: explanation map must be a 2-D float array, got {values.dtype} {values.shape}")
    values = np.nan_to_num(values.astype(np.float32), nan=0.0)
    if values.shape != shape:
        values = cv2.resize(values, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    clipped: NDArray[np.float32] = np.clip(values, 0.0, 1.0)
    return clipped


def turbo(values: NDArray[np.float32]) -> U8:
    """Turbo colour map of a [0, 1] array → RGB uint8."""
    u8 = np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    return _u8(cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_TURBO), cv2.COLOR_BGR2RGB))


def heat_blend(base: U8, values: NDArray[np.float32], *, floor: float = 0.2, alpha: float = 0.5) -> U8:
    """``base`` with the turbo-coloured map blended where the map exceeds ``floor`` (opacity ramps up over 0.1)."""
    rgb = to_rgb(base).astype(np.float32)
    a = (alpha * np.clip((values - floor) / 0.1, 0.0, 1.0))[:, :, None]
    return _u8(np.clip(np.rint((1.0 - a) * rgb + a * turbo(values).astype(np.float32)), 0, 255))


def with_colour_bar(rgb: U8, *, floor: float) -> U8:
    """``rgb`` with a slim vertical 0..1 turbo bar at its right, 1 at the top (the part below ``floor``, which
    `heat_blend` does not draw, dimmed). It holds no text: the report's caption says what it is, in type that scales."""
    h, w = rgb.shape[:2]
    gap, bar_w = max(3, w // 160), max(6, w // 40)
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None].repeat(bar_w, axis=1)
    bar = turbo(ramp).astype(np.float32)
    bar[ramp < floor] *= 0.3
    out = np.zeros((h, w + gap + bar_w, 3), dtype=np.uint8)
    out[:, :w] = to_rgb(rgb)
    out[:, w + gap:] = np.rint(bar).astype(np.uint8)
    return out


def to_rgb(img: U8) -> U8:
    return _u8(cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)) if img.ndim == 2 else img


def draw_mask_outline(rgb: U8, mask: U8) -> U8:
    """Outline each non-zero label of ``mask`` on a copy of ``rgb`` (one colour per label)."""
    out = rgb.copy()
    thickness = max(1, round(max(out.shape[:2]) / 400))
    for n, value in enumerate(v for v in np.unique(mask) if v != 0):
        contours, _ = cv2.findContours((mask == value).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, MASK_COLOURS[n % len(MASK_COLOURS)], thickness, lineType=cv2.LINE_AA)
    return out


def fit(img: U8, max_side: int) -> U8:
    """Downscale (area) so the longer side is at most ``max_side``; never upscale."""
    h, w = img.shape[:2]
    s = max(h, w)
    if s <= max_side:
        return img
    f = max_side / s
    return _u8(cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA))


def at_least(img: U8, min_side: int) -> U8:
    """Upscale (linear) so the longer side is at least ``min_side``, keeping small images legible."""
    h, w = img.shape[:2]
    s = max(h, w)
    if s >= min_side:
        return img
    f = min_side / s
    return _u8(cv2.resize(img, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_LINEAR))


def png_bytes(img: U8) -> bytes:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def jpeg_bytes(img: U8, quality: int = 90) -> bytes:
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 else img
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def ascii_text(text: str) -> str:
    """Text that OpenCV's Hershey fonts can draw: accents stripped, other non-ASCII as '?'."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c if ord(c) < 128 else ("" if unicodedata.combining(c) else "?") for c in decomposed)


def burn_legend(image: U8, title: str, lines: list[tuple[str, tuple[int, int, int]]], footer: str,
                *, colour_bar: bool = False, bar_floor: float = 0.2) -> U8:
    """``image`` (RGB) with a black panel on its right holding the title, coloured lines and a footer.

    With ``colour_bar`` a 0..1 turbo bar follows the lines (the part below ``bar_floor``, which is not
    drawn on the image, dimmed). The text is scaled to the image height so that it stays legible.
    """
    h, w = image.shape[:2]
    scale = max(0.4, h / 1400)
    thick = max(1, round(scale * 1.6))
    line_h = round(34 * scale)
    font = cv2.FONT_HERSHEY_SIMPLEX
    texts = [ascii_text(title)] + [ascii_text(t) for t, _ in lines] + ascii_text(footer).split("\n")
    width_px = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in texts) + round(40 * scale)
    panel_w = max(width_px, round(w * 0.3))
    needed_h = line_h * (len(texts) + 3 + (2 if colour_bar else 0))
    canvas_h = max(h, needed_h)
    canvas = np.zeros((canvas_h, w + panel_w, 3), dtype=np.uint8)
    canvas[:h, :w] = image
    x = w + round(20 * scale)
    y = line_h + round(10 * scale)
    cv2.putText(canvas, texts[0], (x, y), font, scale, (255, 255, 255), thick + 1, cv2.LINE_AA)
    y += round(line_h * 1.5)
    for (_, colour), t in zip(lines, texts[1:1 + len(lines)], strict=True):
        cv2.putText(canvas, t, (x, y), font, scale, colour, thick, cv2.LINE_AA)
        y += line_h
    if colour_bar:
        bar_w, bar_h = max(40, panel_w - 2 * (x - w)), max(6, line_h // 2)
        ramp = np.linspace(0.0, 1.0, bar_w, dtype=np.float32)[None, :].repeat(bar_h, axis=0)
        bar = turbo(ramp).astype(np.float32)
        bar[ramp < bar_floor] *= 0.3
        y0 = y - line_h // 2
        if y0 + bar_h + line_h < canvas_h:
            canvas[y0:y0 + bar_h, x:x + bar_w] = bar.astype(np.uint8)
            small = scale * 0.8
            cv2.putText(canvas, "0", (x, y0 + bar_h + line_h - line_h // 4), font, small, (235, 235, 235), thick, cv2.LINE_AA)
            label = "1  relative evidence"
            tw = cv2.getTextSize(label, font, small, thick)[0][0]
            cv2.putText(canvas, label, (x + bar_w - tw, y0 + bar_h + line_h - line_h // 4), font, small, (235, 235, 235),
                        thick, cv2.LINE_AA)
    y = canvas_h - line_h * (len(texts) - 1 - len(lines)) + round(line_h / 2)
    for t in texts[1 + len(lines):]:
        cv2.putText(canvas, t, (x, y - line_h // 2), font, scale, (255, 220, 0), thick, cv2.LINE_AA)
        y += line_h
    return canvas
