"""Tests of the lung-area measurement (pixel counts and mm² via pixel spacing)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.measure import lung_area, lung_area_from_labels, pixel_area_mm2
from cxrtriage.model.segmenter import LungMask
from cxrtriage.types import InputKind, SourceRef

NAMES = ("background", "right_lung", "left_lung")


def test_counts_and_mm2() -> None:
    labels = np.zeros((10, 20), np.uint8)
    labels[1:5, 2:8] = 1  # 24 px
    labels[2:9, 12:15] = 2  # 21 px
    area = lung_area_from_labels(labels, NAMES, (0.5, 0.25))
    assert area.per_label_px == {"right_lung": 24, "left_lung": 21}
    assert area.total_px == 45
    assert area.pixel_area_mm2 == pytest.approx(0.125)
    assert area.total_mm2 == pytest.approx(45 * 0.125)
    assert area.per_label_mm2 == pytest.approx({"right_lung": 3.0, "left_lung": 2.625})


@pytest.mark.parametrize("spacing", [None, (0.0, 0.0), (-1.0, 0.2), (float("nan"), 0.2)])
def test_unknown_spacing_gives_no_mm2(spacing: tuple[float, float] | None) -> None:
    labels = np.ones((4, 4), np.uint8)
    area = lung_area_from_labels(labels, NAMES, spacing)
    assert area.total_px == 16 and area.total_mm2 is None and area.per_label_mm2 is None
    assert pixel_area_mm2(spacing) is None


def test_lung_area_of_mask_and_bad_labels() -> None:
    labels = np.array([[0, 1], [2, 2]], np.uint8)
    mask = LungMask(labels, NAMES, SourceRef("x.dcm", InputKind.DICOM), (0.2, 0.2))
    area = lung_area(mask)
    assert area.total_px == 3 and area.total_mm2 == pytest.approx(3 * 0.04)
    with pytest.raises(ValueError, match="only 2 label names"):
        lung_area_from_labels(labels, NAMES[:2], None)
