"""Predict hooks that need the full image: lung masks and areas (``--lungs``), and the quality checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cxrtriage.measure.quality import (
    MIN_DYNAMIC_RANGE_FRACTION,
    MIN_LUNG_BALANCE,
    MIN_LUNG_FRACTION,
    MIN_SHORT_SIDE_PX,
    assess_quality,
)
from cxrtriage.model import Segmenter, load_segmenter
from cxrtriage.pipeline import BatchItem, PredictHook, RunContext, ScoredBatch
from cxrtriage.pipeline_segment import save_mask, segment_inputs
from cxrtriage.types import Image2D

if TYPE_CHECKING:
    from cxrtriage.pipeline import PredictConfig


def _image(item: BatchItem, hook: str) -> Image2D:
    if item.image is None:  # the pipeline keeps images whenever a hook says needs_images
        raise ValueError(f"{hook}: no image kept for {item.path}")
    return item.image


class LungsHook(PredictHook):
    """Segment the lungs of every scored image: ``DIR/masks/<stem>.png`` (label map at the original size, as
    ``cxrtriage segment`` writes it) and the columns ``mask_path``, ``lung_area_px``, ``lung_area_mm2``.

    The masks of the current batch stay in ``ctx.lung_masks`` (by item index) for later hooks.
    """

    name = "lungs"
    columns = ("mask_path", "lung_area_px", "lung_area_mm2")
    needs_images = True
    order = 20

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.segmented = 0

    @classmethod
    def from_config(cls, config: PredictConfig) -> LungsHook:
        return cls(load_segmenter(config.segmenter, device=config.device, strict_device=config.strict_device,
                                  intra_op_threads=config.intra_op_threads, spinning=config.workers == 0))

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[dict[str, Any]]:
        ctx.lung_masks.clear()
        images = [_image(item, self.name) for item in batch.items]
        inputs = [self.segmenter.preprocess(img) for img in images]
        masks = segment_inputs(self.segmenter, inputs, [img.source for img in images],
                               [img.pixel_spacing_mm for img in images])
        rows: list[dict[str, Any]] = []
        for item, mask in zip(batch.items, masks, strict=True):
            cols, _ = save_mask(mask, ctx.out_dir, ctx.stem_for(item.path))
            ctx.lung_masks[item.index] = mask
            rows.append(cols)
        self.segmented += len(rows)
        return rows

    def provenance(self) -> dict[str, Any]:
        m = self.segmenter.manifest
        return {"segmenter": {
            "name": m.name, "version": m.version, "sha256": m.sha256, "manifest": str(m.path),
            "labels": list(m.labels), "device": self.segmenter.session.device.value,
            "execution_providers": self.segmenter.session.providers,
        }}


class QualityHook(PredictHook):
    """Column ``quality``: ``ok`` or the failed checks of ``cxrtriage.measure.quality`` (lung checks when the
    lungs hook ran before it on the batch). Triage makes a failed row ``not_assessed``.

    The image checks run in the decode workers (``needs_image_checks``), so the full images need not travel
    to this process unless another hook needs them.
    """

    name = "quality"
    columns = ("quality",)
    needs_image_checks = True
    order = 30  # after the lungs, before heat maps and triage

    def __init__(self) -> None:
        self.failed = 0
        self.by_check: dict[str, int] = {}

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        for item in batch.items:
            first = item.image_checks if item.image_checks is not None else _image(item, self.name)
            report = assess_quality(first, ctx.lung_masks.get(item.index))
            if not report.ok:
                self.failed += 1
                for c in report.failed:
                    self.by_check[c.name] = self.by_check.get(c.name, 0) + 1
            rows.append({"quality": report.summary()})
        return rows

    def provenance(self) -> dict[str, Any]:
        return {"quality": {
            "limits": {"min_short_side_px": MIN_SHORT_SIDE_PX, "min_dynamic_range_fraction": MIN_DYNAMIC_RANGE_FRACTION,
                       "min_lung_fraction": MIN_LUNG_FRACTION, "min_lung_balance": MIN_LUNG_BALANCE},
            "failed": self.failed,
            "failed_by_check": dict(self.by_check),
        }}
