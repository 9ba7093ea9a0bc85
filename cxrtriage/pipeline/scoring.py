"""Scoring one batch, the same for every command that scores: the classifier, then every hook, in order.

``predict``, ``serve`` and ``watch`` all score through ``score_batch`` with the hooks of ``build_hooks``: there is
one scoring code path, whichever way the files arrived.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrtriage.errors import CxrTriageError
from cxrtriage.model import Classifier
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.decode import Decoded
from cxrtriage.pipeline.engine import with_model
from cxrtriage.pipeline.hooks.base import BatchItem, PredictHook, RunContext, ScoredBatch
from cxrtriage.pipeline.hooks.heatmaps import HeatmapsHook
from cxrtriage.pipeline.hooks.lungs import LungsHook
from cxrtriage.pipeline.hooks.quality import QualityHook
from cxrtriage.pipeline.hooks.site import SiteHook
from cxrtriage.pipeline.hooks.triage import TriageHook
from cxrtriage.pipeline.journal import file_digest
from cxrtriage.preprocess import PixelNeeds, PreprocessRecipe
from cxrtriage.results import ImageRecord, Status

log = logging.getLogger(__name__)


def build_hooks(config: PredictConfig, model: Classifier) -> list[PredictHook]:
    """The hooks a run uses, from its config, in run order. Owners of an extension add their line here.

    Loads what they need (policy, site file, segmenter) now, so a bad option fails before any file is scored.
    """
    hooks: list[PredictHook] = []
    triage = TriageHook.from_config(config, model)
    if triage.site is not None:
        hooks.append(SiteHook(triage.site, model.labels))
    if config.lungs_on:
        hooks.append(LungsHook.from_config(config))
    hooks.append(QualityHook())
    if config.heatmaps:
        hooks.append(HeatmapsHook.from_config(config, model))
    hooks.append(triage)
    return sorted(hooks, key=lambda h: h.order)


def pixel_needs(config: PredictConfig, model: Classifier, hooks: Sequence[PredictHook]) -> PixelNeeds | None:
    """How far the decode step may reduce each image: the classifier's input, the hooks' model inputs, and the
    long side of what the hooks draw at the image's geometry; None (full resolution) with ``--full-resolution``
    or when a hook needs the image without saying how much of it."""
    if not config.reduced_decode:
        return None
    drawing = [h for h in hooks if h.needs_images]
    if any(h.image_long_side is None for h in drawing):
        return None
    recipes = (model.manifest.preprocessing, *(r for h in hooks for r in h.recipes))
    return PixelNeeds(recipes, min_long_side=max((h.image_long_side or 0 for h in drawing), default=0))


def extra_recipes(hooks: Sequence[PredictHook]) -> tuple[PreprocessRecipe, ...]:
    """The hooks' model inputs (``PredictHook.recipes``), each once: made in the decode workers beside the
    classifier's (``DecodeTask.extra_recipes``) and handed to ``score_batch`` as ``extra``."""
    return tuple(dict.fromkeys(r for h in hooks for r in h.recipes))


def _checked(new: ImageRecord, old: ImageRecord) -> ImageRecord:
    if new.path != old.path or new.status is not old.status:
        raise ValueError(f"may not change the path or status of {old.path}")
    return new


def unscored(record: ImageRecord, hooks: Sequence[PredictHook], ctx: RunContext) -> ImageRecord:
    """Let every hook update an excluded/failed record."""
    for hook in hooks:
        try:
            record = _checked(hook.on_unscored(record, ctx), record)
        except Exception as exc:  # a hook's bug must not lose the record
            log.warning("extension %s failed on %s: %s", hook.name, record.path, exc)
    return record


def score_batch(items: list[Decoded], model: Classifier, hooks: Sequence[PredictHook],
                ctx: RunContext, extra: tuple[PreprocessRecipe, ...] = ()) -> list[ImageRecord]:
    """Run the classifier and the hooks on ``items`` (all readable); returns their records."""
    records = [with_model(d.record, model.manifest) for d in items]
    inputs = [d.model_input for d in items if d.model_input is not None]
    want_features = any(h.needs_features for h in hooks) and model.has_features
    try:
        out = model.run(np.stack([mi.array for mi in inputs]), features=want_features)
    except CxrTriageError as exc:
        failed = [r.replace(status=Status.FAILED, reason=f"inference failed: {exc}") for r in records]
        return [unscored(r, hooks, ctx) for r in failed]
    records = [r.replace(scores={lab: float(out.scores[i, j]) for j, lab in enumerate(model.labels)})
               for i, r in enumerate(records)]
    for hook in hooks:
        batch = ScoredBatch(
            items=tuple(BatchItem(d.index, mi, r, d.image, d.image_checks, tuple(zip(extra, d.extra_inputs, strict=False)))
                        for d, mi, r in zip(items, inputs, records, strict=True)),
            output=out,
        )
        try:
            updated = list(hook.on_batch(batch, ctx))
            if len(updated) != len(records):
                raise ValueError(f"returned {len(updated)} records for a batch of {len(records)}")
            records = [_checked(new, old) for new, old in zip(updated, records, strict=True)]
        except Exception as exc:  # an extension's failure must not lose the scores
            log.warning("extension %s failed on a batch: %s", hook.name, exc)
            records = [r.with_note(f"{hook.name} failed: {exc}") for r in records]
    return records


def run_fingerprint(config: PredictConfig, model: Classifier, hooks: Sequence[PredictHook],
                    columns: Sequence[str]) -> dict[str, Any]:
    """What must be the same for two runs to share a journal: whatever changes a results row (the model and its
    manifest, the columns, the rules, policy and site files by content, the population, lungs, heat maps, reduced or
    full decoding). Keys are named as the user knows them, so that a refusal can say what differs."""
    m = model.manifest
    segmenter = next((h.segmenter.manifest for h in hooks if isinstance(h, LungsHook)), None)
    return {
        "model": f"{m.name} {m.version} (sha256 {m.sha256}, manifest {m.integrity or 'not sealed'})",
        "results columns": list(columns),
        "--rules": file_digest(config.rules),
        "--policy": file_digest(config.policy),
        "--site": file_digest(config.site),
        "--population": config.population or ("from each file's age, else the image estimate (else unknown)"
                                              if m.population_estimate is not None else
                                              "from each file's age (else unknown)"),
        "--lungs": (f"{segmenter.name} {segmenter.version} (sha256 {segmenter.sha256})" if segmenter is not None
                    else "off"),
        "--heatmaps": config.heatmap_method if config.heatmaps else "off",
        "--full-resolution": "off" if config.reduced_decode else "on",
    }
