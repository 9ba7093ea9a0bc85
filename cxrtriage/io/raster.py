"""Read PNG / JPEG / TIFF radiographs (8- or 16-bit, grey or colour) into an Image2D."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cxrtriage.errors import InputError
from cxrtriage.types import Image2D, InputKind, SourceRef


def read_raster(path: str | Path) -> Image2D:
    """Read a raster image; colour images are converted to luminance (BT.601 weights)."""
    p = Path(path)
    arr = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(f"{p}: OpenCV could not decode this image (corrupt or unsupported format)")
    notes: list[str] = []
    if arr.ndim == 3:
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if not (np.array_equal(arr[:, :, 0], arr[:, :, 1]) and np.array_equal(arr[:, :, 1], arr[:, :, 2])):
            notes.append("colour image converted to luminance")
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY) if arr.dtype == np.uint8 else (
            0.114 * arr[:, :, 0] + 0.587 * arr[:, :, 1] + 0.299 * arr[:, :, 2]
        )
    if arr.dtype == np.uint8:
        vr = (0.0, 255.0)
    elif arr.dtype == np.uint16:
        vr = (0.0, 65535.0)
    else:
        vr = (float(np.min(arr)), float(np.max(arr)))
    return Image2D(
        pixels=np.ascontiguousarray(arr, dtype=np.float32),
        value_range=vr,
        source=SourceRef(path=str(p), kind=InputKind.RASTER),
        notes=tuple(notes),
    )
