"""Pictures for reports: the source image as displayed, lung-mask outlines, overlays and burned-in legends."""

from __future__ import annotations

import base64
import logging
import unicodedata
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from cxrtriage.errors import InputError

log = logging.getLogger(__name__)

U8 = NDArray[np.uint8]
# BGR→RGB is done at the edges; every array here is RGB uint8 [H, W, 3] or grey uint8 [H, W].
MASK_COLOURS: tuple[tuple[int, int, int], ...] = ((0, 200, 255), (255, 200, 0), (120, 255, 120), (255, 120, 255))


def _u8(a: Any) -> U8:
    return np.asarray(a, dtype=np.uint8)


def read_display_image(path: Path) -> U8:
    """The source image as a viewer shows it: grey uint8, dense = bright.

    DICOM: modality LUT, then the stored VOI window/LUT when present (else the 0.5-99.5 percentile
    window), MONOCHROME1 inverted; first frame of a multi-frame image. Raster files: as stored,
    converted to grey and scaled to 8 bits.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: source image not found; the report needs the input files where `predict` read them")
    if _is_dicom(p):
        return _dicom_display(p)
    arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"{p}: OpenCV could not decode this image for the report")
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr[:, :, :3], cv2.COLOR_BGR2GRAY)
    return _to_u8(arr.astype(np.float32), window=None)


def _is_dicom(p: Path) -> bool:
    with open(p, "rb") as f:
        head = f.read(132)
    return len(head) == 132 and head[128:132] == b"DICM" or p.suffix.lower() in (".dcm", ".dicom")


def _dicom_display(p: Path) -> U8:
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, convert_color_space

    try:
        ds = pydicom.dcmread(p)
        arr = ds.pixel_array
    except Exception as exc:
        raise InputError(f"{p}: pixel data cannot be decoded for the report ({type(exc).__name__}: {exc})") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if frames > 1:
        arr = arr[0]
    if spp == 3:
        pi = str(ds.get("PhotometricInterpretation", "RGB"))
        rgb = convert_color_space(arr, pi, "RGB") if pi.startswith("YBR") else arr
        return _u8(cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY))
    values = apply_modality_lut(arr, ds).astype(np.float32)
    window = None
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        try:
            values = apply_voi_lut(values, ds, index=0).astype(np.float32)
            window = (float(values.min()), float(values.max()))
        except Exception:  # a malformed VOI falls back to the percentile window
            window = None
    out = _to_u8(values, window=window)
    if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
        out = 255 - out
    return out


def _to_u8(values: NDArray[np.float32], window: tuple[float, float] | None) -> U8:
    if window is None:
        lo, hi = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    else:
        lo, hi = window
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((values - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def read_mask(path: Path, shape: tuple[int, int]) -> U8:
    """A lung label map PNG (0 = background), resized (nearest) to ``shape`` when it differs."""
    m = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if m is None:
        raise InputError(f"{path}: lung mask PNG cannot be read")
    if m.ndim == 3:
        m = m[:, :, 0]
    m = m.astype(np.uint8)
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return _u8(m)


def read_overlay(path: Path, base: U8) -> U8:
    """An overlay PNG as RGB at ``base``'s size; a PNG with alpha is composited over ``base``."""
    o = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if o is None:
        raise InputError(f"{path}: overlay PNG cannot be read")
    h, w = base.shape[:2]
    if o.shape[:2] != (h, w):
        o = cv2.resize(o, (w, h), interpolation=cv2.INTER_LINEAR)
    if o.ndim == 2:
        return _u8(cv2.cvtColor(o.astype(np.uint8), cv2.COLOR_GRAY2RGB))
    if o.shape[2] == 4:
        alpha = o[:, :, 3:4].astype(np.float32) / 255.0
        fg = cv2.cvtColor(o[:, :, :3], cv2.COLOR_BGR2RGB).astype(np.float32)
        bg = to_rgb(base).astype(np.float32)
        return np.clip(fg * alpha + bg * (1 - alpha), 0, 255).astype(np.uint8)
    return _u8(cv2.cvtColor(o[:, :, :3], cv2.COLOR_BGR2RGB))


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


def burn_legend(image: U8, title: str, lines: list[tuple[str, tuple[int, int, int]]], footer: str) -> U8:
    """``image`` (RGB) with a black panel on its right holding the title, coloured lines and a footer.

    The text is scaled to the image height so that it stays legible on a full-size radiograph.
    """
    h, w = image.shape[:2]
    scale = max(0.4, h / 1400)
    thick = max(1, round(scale * 1.6))
    line_h = round(34 * scale)
    font = cv2.FONT_HERSHEY_SIMPLEX
    texts = [ascii_text(title)] + [ascii_text(t) for t, _ in lines] + ascii_text(footer).split("\n")
    width_px = max(cv2.getTextSize(t, font, scale, thick)[0][0] for t in texts) + round(40 * scale)
    panel_w = max(width_px, round(w * 0.3))
    needed_h = line_h * (len(texts) + 3)
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
    y = canvas_h - line_h * (len(texts) - 1 - len(lines)) + round(line_h / 2)
    for t in texts[1 + len(lines):]:
        cv2.putText(canvas, t, (x, y - line_h // 2), font, scale, (255, 220, 0), thick, cv2.LINE_AA)
        y += line_h
    return canvas
