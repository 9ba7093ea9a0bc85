"""Quality hook: the image (and, with ``--lungs``, lung-mask) checks of every scored image."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxrtriage.io.native import DAMAGE_MESSAGES
from cxrtriage.measure.quality import (
    MIN_DYNAMIC_RANGE_FRACTION,
    MIN_LUNG_BALANCE,
    MIN_LUNG_FRACTION,
    MIN_SHORT_SIDE_PX,
    assess_quality,
)
from cxrtriage.pipeline.hooks.base import PredictHook, RunContext, ScoredBatch
from cxrtriage.results import ImageRecord


class QualityHook(PredictHook):
    """Field ``quality``: ``ok`` or the failed checks of ``cxrtriage.measure.quality`` (lung checks when the
    lungs hook ran before it on the batch). Triage makes a failed image ``not_assessed``.

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

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[ImageRecord]:
        out: list[ImageRecord] = []
        for item in batch.items:
            first = item.image_checks if item.image_checks is not None else item.require_image(self.name)
            report = assess_quality(first, ctx.lung_masks.get(item.index))
            if not report.ok:
                self.failed += 1
                for c in report.failed:
                    self.by_check[c.name] = self.by_check.get(c.name, 0) + 1
            out.append(item.record.replace(quality=report.summary()))
        return out

    def provenance(self) -> Mapping[str, Any]:
        return {"quality": {
            "limits": {"min_short_side_px": MIN_SHORT_SIDE_PX, "min_dynamic_range_fraction": MIN_DYNAMIC_RANGE_FRACTION,
                       "min_lung_fraction": MIN_LUNG_FRACTION, "min_lung_balance": MIN_LUNG_BALANCE,
                       "decoder_damage_messages": DAMAGE_MESSAGES.pattern},
            "failed": self.failed,
            "failed_by_check": dict(self.by_check),
        }}
