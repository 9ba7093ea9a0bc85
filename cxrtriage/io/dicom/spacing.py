"""Pixel spacing of a DICOM image: PixelSpacing, else ImagerPixelSpacing; unknown rather than wrong."""

from __future__ import annotations

import math

from pydicom.dataset import Dataset

from cxrtriage.io.dicom.values import get_numbers, get_raw_text


def pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str, list[str]]:
    """(row, column) spacing in mm from PixelSpacing, else ImagerPixelSpacing; None when unknown (never raises).

    Returns (spacing, the keyword it came from or "", notes).
    """
    notes: list[str] = []
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        raw = get_raw_text(ds, keyword)
        if raw is None:
            continue
        vals = get_numbers(ds, keyword)
        if vals is None or len(vals) != 2 or not all(math.isfinite(v) and v > 0 for v in vals):
            # e.g. the NEMA RG1 chest's PixelSpacing 0.000\0.000: unknown, not zero
            notes.append(f"{keyword} '{raw}' is not a valid pair of positive numbers: treated as unknown")
            continue
        if keyword == "ImagerPixelSpacing":
            notes.append("pixel spacing from ImagerPixelSpacing (detector plane, not corrected for magnification)")
        else:
            notes.append("pixel spacing from PixelSpacing")
        return (float(vals[0]), float(vals[1])), keyword, notes
    if not notes:
        notes.append("pixel spacing unknown (no PixelSpacing or ImagerPixelSpacing)")
    return None, "", notes
