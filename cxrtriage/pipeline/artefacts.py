"""Artefacts that predict (``--lungs``) and segment both write: the lung mask PNG and its areas in the record."""

from __future__ import annotations

from pathlib import Path

from cxrtriage.files import fit_name
from cxrtriage.measure.lungs import lung_area
from cxrtriage.model import LungMask
from cxrtriage.report.masks import write_mask_png
from cxrtriage.results import ImageRecord, LabelArea

MASKS_DIR = "masks"


def save_mask(record: ImageRecord, mask: LungMask, out_dir: Path, stem: str) -> ImageRecord:
    """Write ``out_dir/masks/<stem>.png``; the record gains ``mask_path`` (relative to ``out_dir``) and the
    lung areas, overall and per label (mm² when the pixel spacing is known)."""
    rel = Path(MASKS_DIR) / fit_name(stem, ".png")
    write_mask_png(out_dir / rel, mask.labels)
    area = lung_area(mask)
    per_mm2 = area.per_label_mm2 or {}
    return record.replace(
        mask_path=rel.as_posix(), lung_area_px=area.total_px, lung_area_mm2=area.total_mm2,
        label_areas={lab: LabelArea(px, per_mm2.get(lab)) for lab, px in area.per_label_px.items()},
    )
