"""Measurements from segmentation masks (lung area; mm when the pixel spacing is known)."""

from cxrtriage.measure.lungs import LungArea, lung_area, lung_area_from_labels, pixel_area_mm2

__all__ = ["LungArea", "lung_area", "lung_area_from_labels", "pixel_area_mm2"]
