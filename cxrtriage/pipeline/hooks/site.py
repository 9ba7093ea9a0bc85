"""Site calibration hook: each score becomes the site-calibrated score; the model's own is kept beside it."""

from __future__ import annotations

from collections.abc import Sequence

from cxrtriage.pipeline.hooks.base import PredictHook, RunContext, ScoredBatch
from cxrtriage.results import ImageRecord, model_score_column
from cxrtriage.triage import SiteCalibration, apply_site


class SiteHook(PredictHook):
    """Replace each ``score_<label>`` by the site-calibrated score; keep the model's in ``model_score_<label>``."""

    name = "site"
    order = 10  # first: every later hook (heatmaps, triage) sees the scores the priority is decided on

    def __init__(self, site: SiteCalibration, labels: Sequence[str]) -> None:
        self.site = site
        self.labels = tuple(labels)
        self.columns = tuple(model_score_column(lab) for lab in self.labels)

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[ImageRecord]:
        out: list[ImageRecord] = []
        for item in batch.items:
            model_scores = {lab: s for lab, s in item.record.scores.items() if s is not None}  # all, once scored
            site_scores = apply_site(model_scores, self.site)
            out.append(item.record.replace(model_scores=model_scores,
                                           scores=site_scores))
        return out
