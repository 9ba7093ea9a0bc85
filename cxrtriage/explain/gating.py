"""Heat maps and the lung mask: how much of a map's evidence lies outside the lungs (shortcuts), and optional gating.

**Outside the lungs.** A map shows where the model found evidence; evidence outside the chest (text markers such as
"PORTABLE", the image border, the abdomen, the shoulders, devices on the skin) is a likely *shortcut*: a feature that
goes with the finding in the training data without being the finding. ``outside_share`` measures it per map: the share
of the map's positive evidence (the sum of its values) that lies outside the **lung fields**, the region
``lung_fields`` builds from the segmenter's mask: the convex hull of the largest component of each lung (so the
mediastinum and heart between the lungs count as inside: cardiomegaly and hilar findings legitimately live there),
dilated by 3 % of the image's long side (the segmenter's border and the map's coarse 7 x 7 cells). It is computed on
the map's own model-input grid, where the padding of a letterboxed image (never part of the chest) counts as outside.

**The level.** A share at or above ``SHORTCUT_LEVEL`` (0.5: more than half of the evidence lies outside the lung fields)
makes the map a "possible shortcut": the results row (column ``shortcut``), the overlay and the report say so, naming
the finding and the share. Chosen from 3,221 Grad-CAM maps of the flagged findings of 709 real images (486 NIH adults,
101 ieee adults, 150 Kermany children; docs/explain.md, "Evidence outside the lungs"; ``scripts/shortcut_levels.py``
reproduces it):

- a map with no preference at all would have about 0.48 outside (the median share of the image area outside the lung
  fields); at 0.5 a map prefers the outside of the chest to the chest;
- where the model is validated (pneumonia and ``abnormal`` on the pediatric test images) no map reaches even 0.4
  (largest 0.33 and 0.38); unvalidated findings reach 0.5 often (``nodule``, negative Platt slope: 81 % of its maps);
- by eye, maps above 0.5 put their hottest area on the abdomen, the axilla, a shoulder or an image corner outside the
  body; maps between 0.4 and 0.5 mix lung evidence with the heart base or an image border.

**Gating** (optional: ``predict --heatmap-gate``, ``explain --gate``) multiplies the map by the dilated binary lung mask,
both at the model input and on the original grid. It is NOT rescaled afterwards: values keep their meaning relative to
the whole image's maximum, so a map whose hottest area lay outside the lungs looks weaker after gating. A map with
nothing left inside the mask becomes "no map". Gating hides exactly the evidence a shortcut is made of: the share is
always measured on the ungated map, and the gated overlay says how much it hid.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
from numpy.typing import NDArray

from cxrtriage.explain.base import Heatmap
from cxrtriage.model.segmenter import LungMask
from cxrtriage.preprocess import from_original

SHORTCUT_LEVEL = 0.5  # share of the evidence outside the lung fields that makes a map a "possible shortcut"
SHORTCUT_MARK = "POSSIBLE SHORTCUT"  # how an overlay's note line and the results' note call it
DILATE_FRACTION = 0.03  # of the image's long side: the dilation of the lung mask (gating) and of the lung fields
BoolArray = NDArray[np.bool_]


def _ellipse(radius: int) -> NDArray[np.uint8]:
    return np.asarray(cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1)), np.uint8)


def _radius(shape: tuple[int, int], dilate_fraction: float) -> int:
    return max(1, round(dilate_fraction * max(shape)))


def dilated_mask(mask: LungMask, *, dilate_fraction: float = DILATE_FRACTION) -> tuple[BoolArray, int]:
    """Binary lung mask dilated by ``dilate_fraction`` of the image's long side; returns (mask, radius px)."""
    radius = _radius(mask.shape, dilate_fraction)
    dilated: BoolArray = cv2.dilate(mask.binary().astype(np.uint8), _ellipse(radius)) > 0
    return dilated, radius


def lung_fields(mask: LungMask, *, dilate_fraction: float = DILATE_FRACTION) -> BoolArray | None:
    """The lung fields on the original grid: the convex hull of the largest component of each lung label (both lungs
    and the mediastinum between them), dilated by ``dilate_fraction`` of the long side; None when no lung was found.

    Only the largest component of each label counts: a stray blob of the segmenter in a corner would otherwise
    stretch the hull over the very region where shortcuts live. A convex region dilated by a disc is the region plus
    its outline drawn with a round pen of that diameter, which is what is drawn (a 31 x 31 dilation of a 512 px mask
    costs 10 times more).
    """
    points = []
    for value in range(1, len(mask.label_names)):
        # the outer contours are the components (holes do not matter for a hull); the largest by enclosed area wins
        contours, _ = cv2.findContours((mask.labels == value).astype(np.uint8), cv2.RETR_EXTERNAL,
                                       cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            points.append(max(contours, key=lambda c: (cv2.contourArea(c), len(c))).reshape(-1, 2))
    if not points:
        return None
    hull = cv2.convexHull(np.concatenate(points).astype(np.int32))
    fields = np.zeros(mask.shape, np.uint8)
    cv2.fillConvexPoly(fields, hull, 1)
    cv2.polylines(fields, [hull], isClosed=True, color=1, thickness=2 * _radius(mask.shape, dilate_fraction) + 1)
    inside: BoolArray = fields > 0
    return inside


def outside_share(heatmap: Heatmap, fields: BoolArray) -> float | None:
    """Share of ``heatmap``'s evidence (sum of its values on the model-input grid) outside ``fields`` (original grid).

    None for "no map". Measured on the map as computed: give the ungated map (gating would remove what is measured).
    """
    if heatmap.values is None:
        return None
    if fields.shape != heatmap.geometry.original_shape:
        raise ValueError(f"lung fields {fields.shape} and image {heatmap.geometry.original_shape} differ in shape")
    inside = from_original(fields.astype(np.float32), heatmap.geometry, nearest=True) > 0.5
    values = heatmap.values.astype(np.float64)
    total = float(values.sum())
    if total <= 0.0:
        return None
    return float(values[~inside].sum()) / total


def is_shortcut(share: float | None, level: float = SHORTCUT_LEVEL) -> bool:
    """True when ``share`` (of the evidence outside the lung fields) reaches ``level``."""
    return share is not None and share >= level


def share_note(share: float, level: float = SHORTCUT_LEVEL) -> str:
    """The overlay's line about a map's evidence outside the lung fields."""
    text = f"{100 * share:.0f}% of the evidence lies outside the lung fields (lungs + mediastinum)"
    if is_shortcut(share, level):
        text += f": {SHORTCUT_MARK} (level {100 * level:.0f}%)"
    return text


def shortcut_note(shares: dict[str, float | None], level: float = SHORTCUT_LEVEL) -> str | None:
    """The results row's note naming every finding whose map reaches ``level``, most outside first; None when none."""
    hits = sorted(((lab, s) for lab, s in shares.items() if s is not None and is_shortcut(s, level)),
                  key=lambda x: -x[1])
    if not hits:
        return None
    found = ", ".join(f"'{lab}' {100 * s:.0f}%" for lab, s in hits)
    return (f"possible shortcut: evidence outside the lung fields for {found} (level {100 * level:.0f}%); "
            "check the heat map before trusting the score")


def gate_heatmap(heatmap: Heatmap, mask: LungMask, *, dilate_fraction: float = DILATE_FRACTION) -> Heatmap:
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
