"""Lung area from a segmentation label map: pixels, and mm² when the pixel spacing is known."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cxrtriage.model.segmenter import LungMask


@dataclass(frozen=True, slots=True)
class LungArea:
    """Lung area overall and per non-background label; the mm² fields are None without spacing."""

    total_px: int
    per_label_px: dict[str, int]
    pixel_area_mm2: float | None
    total_mm2: float | None
    per_label_mm2: dict[str, float] | None


def pixel_area_mm2(pixel_spacing_mm: tuple[float, float] | None) -> float | None:
    """Area of one pixel (row spacing x column spacing); None when spacing is unknown or invalid."""
    if pixel_spacing_mm is None:
        return None
    dr, dc = (float(v) for v in pixel_spacing_mm)
    if not (np.isfinite(dr) and np.isfinite(dc)) or dr <= 0.0 or dc <= 0.0:
        return None
    return dr * dc


def lung_area_from_labels(
    labels: NDArray[np.integer],
    label_names: Sequence[str],
    pixel_spacing_mm: tuple[float, float] | None,
) -> LungArea:
    """Count pixels per label (index 0 is background and is not lung) and convert to mm²."""
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=len(label_names))
    if counts.size > len(label_names):
        raise ValueError(f"label map has label {counts.size - 1} but only {len(label_names)} label names")
    per_px = {str(name): int(counts[k]) for k, name in enumerate(label_names) if k > 0}
    total = int(sum(per_px.values()))
    px_mm2 = pixel_area_mm2(pixel_spacing_mm)
    if px_mm2 is None:
        return LungArea(total, per_px, None, None, None)
    return LungArea(total, per_px, px_mm2, total * px_mm2, {k: v * px_mm2 for k, v in per_px.items()})


def lung_area(mask: LungMask) -> LungArea:
    """Lung area of a segmentation result, at its original image size and spacing."""
    return lung_area_from_labels(mask.labels, mask.label_names, mask.pixel_spacing_mm)
