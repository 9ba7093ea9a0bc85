"""Lungs hook (``--lungs``): a lung mask and lung areas for every scored image, for reports and quality checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cxrtriage.model import Segmenter, load_segmenter
from cxrtriage.pipeline.artefacts import save_mask
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import PredictHook, RunContext, ScoredBatch
from cxrtriage.preprocess import ModelInput
from cxrtriage.results import ImageRecord
from cxrtriage.types import InputKind, SourceRef


class LungsHook(PredictHook):
    """Segment the lungs of every scored image: ``DIR/masks/<stem>.png`` (label map at the original size, as
    ``cxrtriage segment`` writes it) and the fields ``mask_path``, ``lung_area_px``, ``lung_area_mm2``.

    The masks of the current batch stay in ``ctx.lung_masks`` (by item index) for later hooks. The segmenter's
    input is made in the decode workers (``recipes``), so the images need not reach this process for it.
    """

    name = "lungs"
    columns = ("mask_path", "lung_area_px", "lung_area_mm2")
    order = 20

    def __init__(self, segmenter: Segmenter) -> None:
        self.segmenter = segmenter
        self.segmented = 0
        self.recipes = (segmenter.manifest.preprocessing,)

    @classmethod
    def from_config(cls, config: PredictConfig) -> LungsHook:
        return cls(load_segmenter(config.segmenter, device=config.device, strict_device=config.strict_device,
                                  intra_op_threads=config.intra_op_threads, spinning=config.workers == 0))

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[ImageRecord]:
        ctx.lung_masks.clear()
        inputs: list[ModelInput] = []
        for item in batch.items:
            mi = item.input_for(self.recipes[0])
            inputs.append(mi if mi is not None else self.segmenter.preprocess(item.require_image(self.name)))
        masks = self.segmenter.segment_inputs(
            inputs, [SourceRef(item.path, InputKind(item.record.input_kind or "unknown")) for item in batch.items],
            [item.record.pixel_spacing_mm for item in batch.items])
        out: list[ImageRecord] = []
        for item, mask in zip(batch.items, masks, strict=True):
            ctx.lung_masks[item.index] = mask
            out.append(save_mask(item.record, mask, ctx.out_dir, ctx.stem_for(item.path)))
        self.segmented += len(out)
        return out

    def provenance(self) -> Mapping[str, Any]:
        m = self.segmenter.manifest
        return {"segmenter": {
            "name": m.name, "version": m.version, "sha256": m.sha256, "integrity": m.integrity, "manifest": str(m.path),
            "labels": list(m.labels), "device": self.segmenter.session.device.value,
            "execution_providers": self.segmenter.session.providers,
        }}
