"""Lung label maps as PNG files (0 = background, 1.. = the segmenter's labels), at the original image size."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from cxrtriage.errors import InputError, OutputError
from cxrtriage.files import atomic_write
from cxrtriage.io.raster import decode_file

U8 = NDArray[np.uint8]


def write_mask_png(path: Path, labels: U8) -> Path:
    """Write a uint8 label map as a PNG, atomically."""
    ok, buf = cv2.imencode(".png", labels)
    if not ok:
        raise OutputError(f"{path}: OpenCV could not encode the mask as PNG")
    return atomic_write(path, buf.tobytes())


def read_mask(path: Path, shape: tuple[int, int]) -> U8:
    """A label map PNG, resized (nearest) to ``shape`` when it differs."""
    m = decode_file(path, cv2.IMREAD_UNCHANGED)  # not cv2.imread: it crashes on a name that is not UTF-8
    if m is None:
        raise InputError(f"{path}: lung mask PNG cannot be read")
    if m.ndim == 3:
        m = m[:, :, 0]
    m = m.astype(np.uint8)
    if m.shape != shape:
        m = cv2.resize(m, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return np.asarray(m, dtype=np.uint8)
