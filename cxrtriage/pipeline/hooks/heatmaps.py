"""Heat-map hook (``--heatmaps``): Grad-CAM (or another forward-free method) overlays of the flagged findings, and
how much of each map's evidence lies outside the lungs (a possible shortcut).

The maps come from the batch's own ``ClassifierOutput`` (features + logits), so no extra classifier pass is
made: the CAM itself is a few small matrix products per map. Rendering the overlay PNGs (and the raw
``.npy`` maps) is the expensive part and is timed separately in ``benchmarks/bench_cam.py``. The lung mask for the
share outside the lungs is the lungs hook's (``--lungs``); without it this hook segments the images that have a map
(one segmenter pass per batch; its cost is measured in ``benchmarks/bench_shortcut.py``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, CxrTriageError, OutputError
from cxrtriage.explain.api import explain_output, flagged_labels
from cxrtriage.explain.base import Heatmap
from cxrtriage.explain.gating import (
    SHORTCUT_LEVEL,
    gate_heatmap,
    lung_fields,
    outside_share,
    share_note,
    shortcut_note,
)
from cxrtriage.explain.overlay import reported_only_note, write_overlays
from cxrtriage.explain.registry import require_method
from cxrtriage.model import Classifier, LungMask, Segmenter, load_segmenter
from cxrtriage.model.registry import command_name
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import BatchItem, PredictHook, RunContext, ScoredBatch
from cxrtriage.results import ImageRecord
from cxrtriage.triage import TriagePolicy, counts_for, load_policy
from cxrtriage.types import InputKind, SourceRef

log = logging.getLogger(__name__)

HEATMAP_DIR = "heatmaps"
# An overlay is two radiograph panels side by side, a legend and a colour bar: at 640 px per panel it is a 1338 x 781
# JPEG of about 175 KB (a 1024 px PNG was 2.3 MB), legible on screen and in the reports, which show it at ~600 px.
OVERLAY_SIDE = 640
MAP_SIDE = 224  # the raw maps (.npy): a CAM holds the model's 7 x 7 feature map; 224 px keeps every detail of it


class HeatmapsHook(PredictHook):
    """Fields ``heatmaps`` (overlay PNGs, relative to DIR, of every finding at or above its balanced threshold),
    ``outside_lungs`` (per mapped finding, the share of its evidence outside the lung fields) and ``shortcut`` (the
    note naming each finding whose share reaches ``SHORTCUT_LEVEL``).

    Files: ``DIR/heatmaps/<stem>__<label>__<method>.jpg`` (JPEG, quality 90: the radiograph panels at most
    ``OVERLAY_SIDE`` px on the long side) and the raw map beside it as ``.npy`` (float16, the original geometry
    downscaled to at most ``MAP_SIDE`` px on the long side, so that thousands of maps stay small). A finding whose
    map is all zero (no positive evidence) gets no file ("no map" is never drawn). The maps are shown ungated, with
    the outline of the lung fields; ``gate`` (``--heatmap-gate``) multiplies them by the dilated lung mask, and the
    overlay says so. The share is always measured on the ungated map. `cxrtriage explain` writes full-size PNG
    overlays for a closer look.
    """

    name = "heatmaps"
    columns = ("heatmaps", "outside_lungs", "shortcut")
    needs_images = True
    image_long_side = OVERLAY_SIDE  # the image is decoded with at least this many pixels (cxrtriage.io.reduced)
    needs_features = True
    # after lungs (20), quality (30) and triage (90): a map whose label does not decide for the population triage
    # chose says so on the overlay instead of "FLAGGED"
    order = 95

    def __init__(self, model: Classifier, method: str = "gradcam", *, segmenter: Segmenter | None = None,
                 gate: bool = False, level: float = SHORTCUT_LEVEL, policy: TriagePolicy | None = None) -> None:
        m = require_method(method, model.manifest)
        if m.needs_forward:
            raise ConfigError(
                f"--heatmap-method {method}: it runs extra model passes; inside predict use a method that needs none "
                "(gradcam, gradcampp, layercam, xgradcam, hirescam, eigencam), or run `cxrtriage explain` afterwards"
            )
        if not 0.0 < level <= 1.0:
            raise ConfigError(f"the shortcut level must be within (0, 1], got {level}")
        if not model.manifest.thresholds:  # before any file is scored, not one failed batch after another
            raise ConfigError(
                f"--heatmaps draws the findings at or above their balanced threshold, and model '{model.manifest.name}' "
                f"has no thresholds yet: measure them first (`cxrtriage models validate {command_name(model.manifest)} IMAGES "
                "--labels LABELS.csv --out DIR`), or leave out --heatmaps and draw chosen labels with `cxrtriage "
                "explain --label LABEL`"
            )
        self.method = m.name
        self.segmenter = segmenter  # None: the lungs hook's masks (ctx.lung_masks) are used
        # like the lungs hook, the segmenter's input is made in the decode workers from the full image
        self.recipes = (segmenter.manifest.preprocessing,) if segmenter is not None else ()
        self.gate = gate
        self.level = level
        # its [labels] decide_unvalidated lets a label decide where it is not validated
        self.policy = policy if policy is not None else load_policy(None)
        self.written = 0
        self.maps = 0
        self.segmented = 0
        self.shortcuts = 0

    @classmethod
    def from_config(cls, config: PredictConfig, model: Classifier) -> HeatmapsHook:
        segmenter = None if config.lungs_on else load_segmenter(
            config.segmenter, device=config.device, strict_device=config.strict_device,
            intra_op_threads=config.intra_op_threads, spinning=config.workers == 0)
        return cls(model, config.heatmap_method, segmenter=segmenter, gate=config.heatmap_gate,
                   policy=load_policy(config.policy))

    def _masks(self, items: list[BatchItem], ctx: RunContext) -> dict[int, LungMask]:
        """The lung masks of ``items``: the lungs hook's, else one segmenter pass over those that lack one."""
        masks = {it.index: ctx.lung_masks[it.index] for it in items if it.index in ctx.lung_masks}
        todo = [it for it in items if it.index not in masks]
        if todo and self.segmenter is not None:
            inputs = [it.input_for(self.recipes[0]) or self.segmenter.preprocess(it.require_image(self.name))
                      for it in todo]
            found = self.segmenter.segment_inputs(
                inputs, [SourceRef(it.path, InputKind(it.record.input_kind or "unknown")) for it in todo],
                [it.record.pixel_spacing_mm for it in todo])
            masks |= {it.index: m for it, m in zip(todo, found, strict=True)}
            self.segmented += len(todo)
        return masks

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[ImageRecord]:
        model = ctx.model
        targets = [flagged_labels(model, batch.output.scores[i]) for i in range(len(batch))]
        maps = explain_output(model, batch.output, [it.model_input.geometry for it in batch.items], targets,
                              method=self.method)
        with_maps = [it for it, hms in zip(batch.items, maps, strict=True) if any(not h.empty for h in hms)]
        try:
            masks = self._masks(with_maps, ctx)
        except CxrTriageError as exc:  # the maps are still drawn; the rows say why no share was measured
            log.warning("lung masks for the heat maps failed on a batch: %s", exc)
            masks = {}
        out_dir = ctx.out_dir / HEATMAP_DIR
        out: list[ImageRecord] = []
        for item, heatmaps in zip(batch.items, maps, strict=True):
            image = item.require_image(self.name)
            mask = masks.get(item.index)
            fields = lung_fields(mask) if mask is not None else None
            shares: dict[str, float] = {}
            if fields is not None:
                measured = []
                for h in heatmaps:
                    share = outside_share(h, fields)
                    if share is not None:
                        shares[h.label] = round(share, 4)
                        h = dataclasses.replace(h, notes=(*h.notes, share_note(share, self.level)))
                    measured.append(h)
                heatmaps = measured
            if self.gate and mask is not None:
                heatmaps = [gate_heatmap(h, mask) for h in heatmaps]
            pop = item.record.population
            if pop is not None:
                heatmaps = [h if counts_for(model.manifest, self.policy, h.label, pop)
                            else dataclasses.replace(h, notes=(*h.notes, reported_only_note(pop))) for h in heatmaps]
            record = item.record.replace(outside_lungs=shares, shortcut=shortcut_note(dict(shares), self.level))
            record = self._unmeasured(record, heatmaps, mask is not None, fields is not None)
            self.maps += sum(not h.empty for h in heatmaps)
            self.shortcuts += sum(s >= self.level for s in shares.values())
            try:
                pngs = write_overlays(out_dir, ctx.stem_for(item.path), image, heatmaps, model.manifest,
                                      max_side=OVERLAY_SIDE, compact_npy=True, npy_max_side=MAP_SIDE, suffix=".jpg",
                                      outline=fields)
            except OutputError as exc:  # one image's maps failing to write never costs the others theirs
                out.append(record.with_note(f"heat maps not written: {exc}"))
                continue
            self.written += len(pngs)
            out.append(record.replace(heatmaps=tuple(str(Path(HEATMAP_DIR) / p.name) for p in pngs)))
        return out

    @staticmethod
    def _unmeasured(record: ImageRecord, heatmaps: list[Heatmap], have_mask: bool, have_fields: bool) -> ImageRecord:
        """Say why maps have no share outside the lungs (no mask, or the segmenter found no lung)."""
        if not any(not h.empty for h in heatmaps) or have_fields:
            return record
        why = "no lung was found in the image" if have_mask else "no lung mask"
        return record.with_note(f"evidence outside the lungs not measured: {why}")

    def provenance(self) -> Mapping[str, Any]:
        outside: dict[str, Any] = {
            "region": "lung fields: convex hull of the largest component of each lung, dilated by 3% of the long side",
            "shortcut_level": self.level, "maps": self.maps, "maps_at_or_above_level": self.shortcuts,
            "mask_source": "lungs hook (--lungs)" if self.segmenter is None else "segmented for the heat maps",
        }
        if self.segmenter is not None:
            m = self.segmenter.manifest
            outside |= {"images_segmented": self.segmented,
                        "segmenter": {"name": m.name, "version": m.version, "sha256": m.sha256, "integrity": m.integrity}}
        return {"heatmaps": {"method": self.method, "labels": "flagged (score >= balanced threshold)",
                             "lung_gated": self.gate, "overlays_written": self.written, "outside_lungs": outside}}
