"""Triage hook: each image's priority (from its scores, or ``not_assessed``) and ``DIR/worklist.csv`` at the end."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtriage.measure.quality import OK as QUALITY_OK
from cxrtriage.model import Classifier, ModelManifest
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import PredictHook, PredictSummary, RunContext, ScoredBatch
from cxrtriage.results import PRIORITY_LEVELS, ImageRecord, Priority, Status, read_results
from cxrtriage.triage import (
    SiteCalibration,
    ThresholdKind,
    TriagePolicy,
    build_worklist,
    check_policy,
    load_policy,
    load_site,
    normalize_label,
    triage_record,
    write_worklist,
)

log = logging.getLogger(__name__)

WORKLIST_CSV = "worklist.csv"


@dataclass(frozen=True, slots=True)
class TriageOutcome:
    """What triage did in a run: priorities of images and of studies, the worklist, coverage notes."""

    worklist: Path
    images_by_priority: dict[str, int]
    studies_by_priority: dict[str, int]
    policy_name: str
    site_file: str
    notes: tuple[str, ...] = field(default_factory=tuple)


def covered_findings(policy: TriagePolicy, labels: Sequence[str]) -> dict[str, list[str]]:
    """Per policy level (critical, urgent): the model's labels it lists."""
    return {lvl.priority.value: [lab for lab in labels if normalize_label(lab) in lvl.findings] for lvl in policy.levels}


def coverage_notes(policy: TriagePolicy, manifest: ModelManifest) -> list[str]:
    """Plain sentences for a level of the policy that no label of the model covers."""
    notes: list[str] = []
    for level, labels in covered_findings(policy, manifest.labels).items():
        if not labels:
            notes.append(f"no {level} finding of policy '{policy.name}' is covered by model '{manifest.name}' "
                         f"({', '.join(next(lv.findings for lv in policy.levels if lv.priority.value == level))} "
                         f"not among its labels): no image can be {level}")
    return notes


def operating_point(policy: TriagePolicy) -> str:
    """The threshold kind the policy's levels decide on (``balanced`` when they differ or there is no level)."""
    kinds = {lvl.threshold.value for lvl in policy.levels}
    return kinds.pop() if len(kinds) == 1 else ThresholdKind.BALANCED.value


class TriageHook(PredictHook):
    """Fill ``priority``, ``priority_reason``, ``priority_finding``, ``priority_score`` and ``site_file`` of every
    record (scored or not) and write ``DIR/worklist.csv`` at the end.

    A scored record whose ``quality`` names a failed check is ``not_assessed`` with that reason (its scores stay).
    """

    name = "triage"
    columns = ("priority", "priority_reason", "priority_finding", "priority_score", "site_file")
    order = 90  # last: it reads the site scores and the quality checks

    def __init__(self, policy: TriagePolicy, manifest: ModelManifest, site: SiteCalibration | None = None,
                 *, policy_path: Path | None = None) -> None:
        check_policy(policy, manifest, site)
        self.policy = policy
        self.manifest = manifest
        self.site = site
        self.policy_path = policy_path
        self.site_file = str(site.path) if site is not None and site.path is not None else ""
        self.counts: Counter[Priority] = Counter()
        self.outcome: TriageOutcome | None = None
        self.notes = coverage_notes(policy, manifest)

    @classmethod
    def from_config(cls, config: PredictConfig, model: Classifier) -> TriageHook:
        """Load the policy (``--policy`` or the packaged default) and the site file, and check them against the model.

        Raises ``ConfigError``/``ModelError`` before any file is scored.
        """
        manifest = model.manifest
        # A policy file the user wrote warns about labels the model lacks (a typo?); the packaged default
        # names findings many models lack, which is said once at INFO level.
        policy = load_policy(config.policy, labels=manifest.labels if config.policy is not None else None)
        unknown = policy.unknown_labels(manifest.labels)
        if config.policy is None and unknown:
            log.info("triage policy '%s': %s not among the labels of model '%s'; they are not assessed",
                     policy.name, ", ".join(unknown), manifest.name)
        site = load_site(config.site, manifest=manifest) if config.site is not None else None
        return cls(policy, manifest, site, policy_path=config.policy)

    def decide(self, record: ImageRecord) -> ImageRecord:
        quality = (record.quality or "").strip()
        if record.status is Status.SCORED and quality and quality != QUALITY_OK:
            decided = record.replace(priority=Priority.NOT_ASSESSED, priority_reason=f"quality check failed: {quality}",
                                     priority_finding="", priority_score=None)
        else:
            decided = triage_record(record, manifest=self.manifest, policy=self.policy, site=self.site)
        assert decided.priority is not None
        self.counts[decided.priority] += 1
        return decided.replace(site_file=self.site_file)

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[ImageRecord]:
        return [self.decide(item.record) for item in batch.items]

    def on_unscored(self, record: ImageRecord, ctx: RunContext) -> ImageRecord:
        return self.decide(record)

    def on_finish(self, ctx: RunContext, summary: PredictSummary) -> TriageOutcome:
        """Write ``DIR/worklist.csv`` (atomically) from the results as written."""
        return self.finish(ctx, read_results(summary.results_jsonl).records)

    def finish(self, ctx: RunContext, records: Sequence[ImageRecord]) -> TriageOutcome:
        """Write ``DIR/worklist.csv`` (atomically) from ``records``, the whole results table as written (``serve`` and
        ``watch`` keep it in memory and call this after each batch).

        The image counts are taken from the records too: rows an earlier run scored (``--resume``, ``serve``)
        count as well as the ones decided in this process."""
        entries = build_worklist(records)
        path = write_worklist(ctx.out_dir / WORKLIST_CSV, entries)
        self.counts = Counter(r.priority for r in records if r.priority is not None)
        studies = Counter(e.priority for e in entries)
        self.outcome = TriageOutcome(
            worklist=path,
            images_by_priority={p.value: self.counts[p] for p in PRIORITY_LEVELS if self.counts[p]},
            studies_by_priority={p.value: studies[p] for p in PRIORITY_LEVELS if studies[p]},
            policy_name=self.policy.name,
            site_file=self.site_file,
            notes=tuple(self.notes),
        )
        return self.outcome

    def thresholds(self) -> dict[str, dict[str, Any]]:
        """Per label, the thresholds in force (the site's where it calibrated the label, else the manifest's),
        and the one the policy decides on (``threshold``/``kind``)."""
        out: dict[str, dict[str, Any]] = {}
        op = operating_point(self.policy)
        for lab in self.manifest.labels:
            lt = self.manifest.thresholds.get(lab)
            site_lab = self.site.labels.get(lab) if self.site is not None else None
            if site_lab is not None:
                vals, source = {"rule_out": site_lab.rule_out, "balanced": site_lab.balanced}, "site"
            elif lt is not None:
                vals, source = {"rule_out": lt.rule_out.threshold, "balanced": lt.balanced.threshold}, "model"
            else:
                continue
            level = self.policy.level_of(lab)
            kind = self.policy.label_thresholds.get(normalize_label(lab), level.threshold if level else ThresholdKind(op))
            out[lab] = {**vals, "threshold": vals[kind.value], "kind": kind.value, "source": source}
        return out

    def provenance(self) -> dict[str, Any]:
        levels = {lvl.priority.value: {"findings": list(lvl.findings), "threshold": lvl.threshold.value,
                                       "covered_by_model": covered_findings(self.policy, self.manifest.labels)
                                       .get(lvl.priority.value, [])}
                  for lvl in self.policy.levels}
        counts: dict[str, Any] = {"images_by_priority": {p.value: self.counts[p] for p in PRIORITY_LEVELS}}
        if self.outcome is not None:
            counts["studies_by_priority"] = self.outcome.studies_by_priority
        return {
            "operating_point": operating_point(self.policy),
            "thresholds": self.thresholds(),
            "policy": {
                "name": self.policy.name,
                "path": str(self.policy_path.resolve()) if self.policy_path is not None else "default",
                "description": self.policy.description,
                "levels": levels,
                "summary_labels": list(self.policy.summary_labels),
                "ignored_labels": list(self.policy.ignored_labels),
                "label_thresholds": {k: v.value for k, v in self.policy.label_thresholds.items()},
                "not_covered_by_model": list(self.policy.unknown_labels(self.manifest.labels)),
            },
            "priority_levels": [p.value for p in PRIORITY_LEVELS],
            "site_file": self.site_file,
            "counts": counts,
            "notes": list(self.notes),
        }
