"""Heat-map hook (``--heatmaps``): Grad-CAM (or another forward-free method) overlays of the flagged findings.

The maps come from the batch's own ``ClassifierOutput`` (features + logits), so no extra model pass is
made: the CAM itself is a few small matrix products per map. Rendering the overlay PNGs (and the raw
``.npy`` maps) is the expensive part and is timed separately in ``benchmarks/bench_cam.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, OutputError
from cxrtriage.explain.api import explain_output, flagged_labels
from cxrtriage.explain.gating import gate_heatmap
from cxrtriage.explain.overlay import write_overlays
from cxrtriage.explain.registry import require_method
from cxrtriage.model import Classifier
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import PredictHook, RunContext, ScoredBatch
from cxrtriage.results import ImageRecord

HEATMAP_DIR = "heatmaps"
# An overlay is two radiograph panels side by side, a legend and a colour bar: at 640 px per panel it is a 1338 x 781
# JPEG of about 175 KB (a 1024 px PNG was 2.3 MB), legible on screen and in the reports, which show it at ~600 px.
OVERLAY_SIDE = 640
MAP_SIDE = 224  # the raw maps (.npy): a CAM holds the model's 7 x 7 feature map; 224 px keeps every detail of it


class HeatmapsHook(PredictHook):
    """Field ``heatmaps``: overlay PNGs (relative to DIR) of every finding at or above its balanced threshold.

    Files: ``DIR/heatmaps/<stem>__<label>__<method>.jpg`` (JPEG, quality 90: the radiograph panels at most
    ``OVERLAY_SIDE`` px on the long side) and the raw map beside it as ``.npy`` (float16, the original geometry
    downscaled to at most ``MAP_SIDE`` px on the long side, so that thousands of maps stay small). A finding whose
    map is all zero (no positive evidence) gets no file ("no map" is never drawn). With lung masks in the run
    (``--lungs``), the maps are gated by the dilated lung mask, and the overlay says so. `cxrtriage explain` writes
    full-size PNG overlays for a closer look.
    """

    name = "heatmaps"
    columns = ("heatmaps",)
    needs_images = True
    image_long_side = OVERLAY_SIDE  # the image is decoded with at least this many pixels (cxrtriage.io.reduced)
    needs_features = True
    order = 40  # after lungs (20) and quality (30), before triage (90)

    def __init__(self, model: Classifier, method: str = "gradcam", *, gate_with_lungs: bool = False) -> None:
        m = require_method(method, model.manifest)
        if m.needs_forward:
            raise ConfigError(
                f"--heatmap-method {method}: it runs extra model passes; inside predict use a method that needs none "
                "(gradcam, gradcampp, layercam, xgradcam, hirescam, eigencam), or run `cxrtriage explain` afterwards"
            )
        self.method = m.name
        self.gate_with_lungs = gate_with_lungs
        self.written = 0

    @classmethod
    def from_config(cls, config: PredictConfig, model: Classifier) -> HeatmapsHook:
        return cls(model, config.heatmap_method, gate_with_lungs=config.lungs_on)

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[ImageRecord]:
        model = ctx.model
        targets = [flagged_labels(model, batch.output.scores[i]) for i in range(len(batch))]
        maps = explain_output(model, batch.output, [it.model_input.geometry for it in batch.items], targets,
                              method=self.method)
        out_dir = ctx.out_dir / HEATMAP_DIR
        out: list[ImageRecord] = []
        for item, heatmaps in zip(batch.items, maps, strict=True):
            image = item.require_image(self.name)
            mask = ctx.lung_masks.get(item.index)
            if self.gate_with_lungs and mask is not None:
                heatmaps = [gate_heatmap(h, mask) for h in heatmaps]
            try:
                pngs = write_overlays(out_dir, ctx.stem_for(item.path), image, heatmaps, model.manifest,
                                      max_side=OVERLAY_SIDE, compact_npy=True, npy_max_side=MAP_SIDE, suffix=".jpg")
            except OutputError as exc:  # one image's maps failing to write never costs the others theirs
                out.append(item.record.with_note(f"heat maps not written: {exc}"))
                continue
            self.written += len(pngs)
            out.append(item.record.replace(heatmaps=tuple(str(Path(HEATMAP_DIR) / p.name) for p in pngs)))
        return out

    def provenance(self) -> Mapping[str, Any]:
        return {"heatmaps": {"method": self.method, "labels": "flagged (score >= balanced threshold)",
                             "lung_gated": self.gate_with_lungs, "overlays_written": self.written}}
