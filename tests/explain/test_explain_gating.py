"""The lung fields, the share of a map's evidence outside them, the shortcut note, and the overlay's outline."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.explain.base import Heatmap
from cxrtriage.explain.gating import (
    SHORTCUT_LEVEL,
    is_shortcut,
    lung_fields,
    outside_share,
    share_note,
    shortcut_note,
)
from cxrtriage.explain.overlay import OverlayText, render_overlay
from cxrtriage.model import LungMask
from cxrtriage.preprocess import PreprocessRecipe, to_model_input
from cxrtriage.types import Image2D, InputKind, SourceRef

SRC = SourceRef("synthetic.png", InputKind.RASTER)


def _mask(h: int = 100, w: int = 100, *, stray: bool = False) -> LungMask:
    """Right lung (1) in columns 20-39, left lung (2) in 60-79, rows 20-79; optionally a stray blob of 1 in a corner."""
    labels = np.zeros((h, w), np.uint8)
    labels[20:80, 20:40] = 1
    labels[20:80, 60:80] = 2
    if stray:
        labels[90:96, 2:6] = 1
    return LungMask(labels, ("background", "right", "left"), SRC)


def _heatmap(values: np.ndarray, shape: tuple[int, int] = (100, 100)) -> Heatmap:
    image = Image2D(np.zeros(shape, np.float32), (0.0, 1.0), SRC)
    geometry = to_model_input(image, PreprocessRecipe(size=values.shape[0])).geometry
    return Heatmap(label="effusion", method="gradcam", values=values.astype(np.float32), geometry=geometry)


def test_lung_fields_span_both_lungs_and_the_mediastinum_but_not_a_stray_blob() -> None:
    fields = lung_fields(_mask(stray=True))
    assert fields is not None and fields.shape == (100, 100)
    assert fields[50, 50]  # the mediastinum between the lungs counts as inside
    assert fields[50, 30] and fields[50, 70]  # both lungs
    assert fields[50, 18]  # dilated by 3 px (3 % of 100) beyond the lung border
    assert not fields[50, 10] and not fields[5, 50] and not fields[95, 50]  # the chest wall, neck, abdomen: outside
    assert not fields[93, 4]  # the stray blob is neither inside nor stretching the hull
    empty = LungMask(np.zeros((10, 10), np.uint8), ("background", "right", "left"), SRC)
    assert lung_fields(empty) is None


def test_outside_share_is_the_share_of_evidence_outside_the_fields() -> None:
    fields = lung_fields(_mask())
    assert fields is not None
    inside_only = np.zeros((100, 100))
    inside_only[40:60, 25:75] = 1.0
    assert outside_share(_heatmap(inside_only), fields) == 0.0
    outside_only = np.zeros((100, 100))
    outside_only[0:10, :] = 0.5  # the neck and the top border
    assert outside_share(_heatmap(outside_only), fields) == 1.0
    both = inside_only + outside_only  # 1000 x 1.0 inside, 1000 x 0.5 outside
    assert outside_share(_heatmap(both), fields) == pytest.approx(500 / 1500)
    # a map at a smaller model grid than the image: the fields are mapped to it
    small = np.zeros((50, 50))
    small[0:5, :] = 1.0
    assert outside_share(_heatmap(small), fields) == 1.0
    none = Heatmap(label="x", method="gradcam", values=None, geometry=_heatmap(small).geometry, reason="no map")
    assert outside_share(none, fields) is None
    with pytest.raises(ValueError, match="differ in shape"):
        outside_share(_heatmap(small, shape=(80, 100)), fields)


def test_the_level_and_the_notes() -> None:
    assert SHORTCUT_LEVEL == 0.5 and is_shortcut(0.5) and not is_shortcut(0.49) and not is_shortcut(None)
    assert "POSSIBLE SHORTCUT" in share_note(0.62) and "62%" in share_note(0.62)
    assert "SHORTCUT" not in share_note(0.3) and "30%" in share_note(0.3)
    assert shortcut_note({"a": 0.2, "b": None}) is None
    note = shortcut_note({"a": 0.55, "b": 0.2, "c": 0.9})
    assert note is not None and note.startswith("possible shortcut")
    assert note.index("'c' 90%") < note.index("'a' 55%") and "'b'" not in note  # most outside first


def test_the_overlay_draws_the_outline_of_the_lung_fields() -> None:
    fields = lung_fields(_mask())
    assert fields is not None
    values = np.zeros((100, 100), np.float32)
    values[0:10, :] = 1.0
    hm = _heatmap(values)
    image = Image2D(np.full((100, 100), 0.5, np.float32), (0.0, 1.0), SRC)
    text = OverlayText("effusion", 0.3, 0.2, "balanced", "m 1", "Grad-CAM", notes=(share_note(1.0),))
    plain = render_overlay(image, hm, text)
    outlined = render_overlay(image, hm, text, outline=fields)
    # the legend's added words may wrap onto one more line of the text band: compare the panels, bottom-aligned
    # (above the footer: one line of the 14 px font, 25 rows)
    assert plain.shape[1] == outlined.shape[1] and outlined.shape[0] >= plain.shape[0]
    panels = slice(-(100 + 25), -25)
    diff = np.any(plain[panels] != outlined[panels], axis=2)
    assert diff.any()
    white = np.all(outlined[panels][diff] > 200, axis=1)
    assert white.mean() > 0.3  # the outline is white (anti-aliased edges aside)
