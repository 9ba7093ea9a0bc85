"""Optional gating of a heat map by a (dilated) lung mask from the segmenter.

The map is multiplied by the dilated binary lung mask, both at the model input and on the
original grid. It is NOT rescaled afterwards: values keep their meaning relative to the whole
image's maximum, so a map whose hottest area lay outside the lungs looks weaker after gating.
A map with nothing left inside the mask becomes "no map".
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from cxrtriage.explain.base import Heatmap
from cxrtriage.model.segmenter import LungMask
from cxrtriage.preprocess import from_original


def dilated_mask(mask: LungMask, *, dilate_fraction: float = 0.03) -> tuple[np.ndarray, int]:
    """Binary lung mask dilated by ``dilate_fraction`` of the image's long side; returns (mask, radius px)."""
    radius = max(1, round(dilate_fraction * max(mask.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(mask.binary().astype(np.uint8), kernel) > 0, radius


def gate_heatmap(heatmap: Heatmap, mask: LungMask, *, dilate_fraction: float = 0.03) -> Heatmap:
    """The heat map restricted to the dilated lung mask (see the module docstring)."""
    if heatmap.empty or heatmap.values is None:
        return heatmap
    if mask.shape != heatmap.geometry.original_shape:
        raise ValueError(f"lung mask {mask.shape} and image {heatmap.geometry.original_shape} differ in shape")
    binary, radius = dilated_mask(mask, dilate_fraction=dilate_fraction)
    note = f"gated by the lung mask (dilated by {radius} px); evidence outside it is hidden"
    gate = binary if heatmap.gate is None else binary & heatmap.gate
    small = from_original(gate.astype(np.float32), heatmap.geometry, nearest=True)
    values = (heatmap.values * (small > 0.5)).astype(np.float32)
    original = heatmap.original
    assert original is not None
    original = (original * gate).astype(np.float32)
    gated = dataclasses.replace(heatmap, values=values, gate=gate, notes=(*heatmap.notes, note))
    gated._cache["original"] = original  # the full-resolution map times the full-resolution mask
    if float(original.max(initial=0.0)) <= 0.0:
        return dataclasses.replace(heatmap, values=None, gate=None, notes=(*heatmap.notes, note),
                                   reason="all of the map's evidence lies outside the (dilated) lung mask")
    return gated
