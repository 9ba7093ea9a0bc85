"""Triage hook: each image's priority (from its scores, or ``not_assessed``) and ``DIR/worklist.csv`` at the end."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError
from cxrtriage.measure.quality import OK as QUALITY_OK
from cxrtriage.model import Classifier, ModelManifest
from cxrtriage.model.manifest import UNKNOWN_POPULATION
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import PredictHook, PredictSummary, RunContext, ScoredBatch
from cxrtriage.results import PRIORITY_LEVELS, ImageRecord, Priority, Status, read_results
from cxrtriage.triage import (
    SiteCalibration,
    ThresholdKind,
    TriagePolicy,
    build_worklist,
    check_policy,
    covered_tiers,
    deciding_labels,
    has_operating_points,
    load_policy,
    load_site,
    normalize_label,
    scores_only_note,
    study_mode,
    study_threshold,
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
    populations: dict[str, int] = field(default_factory=dict)  # scored images per population that decided
    population_sources: dict[str, int] = field(default_factory=dict)  # ... per where the population came from
    scores_only: bool = False  # the model has no operating points: no priority was decided (``has_operating_points``)


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


def study_notes(policy: TriagePolicy, manifest: ModelManifest, site: SiteCalibration | None) -> list[str]:
    """Plain sentences about how study-level operating points apply with this policy and site."""
    notes: list[str] = []
    if site is not None and not site.study:
        if manifest.study is not None:
            notes.append(f"site file {site.where} has per-label thresholds only (schema {site.schema_version}): the "
                         "per-label rules decide, not the model's study-level operating points; re-run `cxrtriage "
                         "calibrate` for study-level site thresholds")
        return notes
    if not study_mode(manifest, site):
        return notes
    if policy.label_thresholds:
        notes.append(f"policy '{policy.name}' [thresholds] ({', '.join(policy.label_thresholds)}) is not used: priorities "
                     "are decided on study-level operating points")
    if manifest.study is not None and site is None:
        for lvl in policy.levels:
            tier = manifest.study.tiers.get(lvl.priority.value)
            have = [lab for lab in manifest.labels if normalize_label(lab) in lvl.findings and not policy.is_ignored(lab)]
            if tier is not None and have and set(have) != set(tier.labels):
                notes.append(f"the study-level {tier.name} threshold of model '{manifest.name}' was set for "
                             f"{', '.join(tier.labels)}; policy '{policy.name}' lists {', '.join(have)}: the "
                             "sensitivity/specificity measured for it do not apply")
    return notes


def operating_point(policy: TriagePolicy) -> str:
    """The threshold kind the policy's levels decide on (``balanced`` when they differ or there is no level)."""
    kinds = {lvl.threshold.value for lvl in policy.levels}
    return kinds.pop() if len(kinds) == 1 else ThresholdKind.BALANCED.value


class TriageHook(PredictHook):
    """Fill ``priority``, ``priority_reason``, ``priority_finding``, ``priority_score`` and ``site_file`` of every
    record (scored or not) and write ``DIR/worklist.csv`` at the end.

    A scored record whose ``quality`` names a failed check is ``not_assessed`` with that reason (its scores stay).

    With a model whose manifest has a ``population_estimate`` and no ``--population``, the hook also computes each
    image's population estimate from the classifier's feature maps (already computed by the same inference call) and
    fills ``population_probability``; ``triage_record`` uses it only when the DICOM gives no age.

    A model without operating points (``has_operating_points``: e.g. imported from a plain ONNX file and not yet
    validated) is scored all the same, with every image ``not_assessed``: ``scores_only`` is then True, and the
    run's summary and run.json say why and what to run next (``scores_only_note``).
    """

    name = "triage"
    columns: tuple[str, ...] = ("priority", "priority_reason", "priority_finding", "priority_score", "site_file", "population",
               "patient_age")
    order = 90  # last: it reads the site scores and the quality checks

    def __init__(self, policy: TriagePolicy, manifest: ModelManifest, site: SiteCalibration | None = None,
                 *, policy_path: Path | None = None, population: str | None = None) -> None:
        check_policy(policy, manifest, site)
        # Why scores without priorities rather than refusing the run: `models validate` and `calibrate` set a new
        # model's operating points from exactly these scores, and the docs promise an imported model works with
        # every command; not_assessed is the tool deciding nothing, so no image is ranked on thresholds it lacks.
        self.scores_only = not has_operating_points(manifest, site)
        if population is not None and population != UNKNOWN_POPULATION and population not in manifest.populations:
            have = [*manifest.populations, UNKNOWN_POPULATION] if manifest.populations else []
            raise ConfigError(
                f"--population {population!r}: model '{manifest.name}' "
                + (f"has populations {have}" if have else "defines no populations (its manifest has none)")
            )
        self.policy = policy
        self.manifest = manifest
        self.site = site
        self.policy_path = policy_path
        self.population = population if manifest.populations else None
        # The image estimate: only for a model that has one, and only when --population does not say who the
        # patients are (``--population unknown`` turns it off).
        self.estimate = manifest.population_estimate if manifest.populations and population is None else None
        self.needs_features = self.estimate is not None
        if manifest.population_estimate is not None:
            self.columns = (*type(self).columns, "population_source", "population_probability")
        self.site_file = str(site.path) if site is not None and site.path is not None else ""
        self.counts: Counter[Priority] = Counter()
        self.population_counts: Counter[str] = Counter()
        self.population_source_counts: Counter[str] = Counter()
        self.outcome: TriageOutcome | None = None
        self.notes = ([scores_only_note(manifest)] if self.scores_only
                      else coverage_notes(policy, manifest) + study_notes(policy, manifest, site))

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
        return cls(policy, manifest, site, policy_path=config.policy, population=config.population)

    def decide(self, record: ImageRecord) -> ImageRecord:
        quality = (record.quality or "").strip()
        if record.status is Status.SCORED and quality and quality != QUALITY_OK:
            decided = record.replace(priority=Priority.NOT_ASSESSED, priority_reason=f"quality check failed: {quality}",
                                     priority_finding="", priority_score=None)
        else:
            decided = triage_record(record, manifest=self.manifest, policy=self.policy, site=self.site,
                                    default_population=self.population)
        assert decided.priority is not None
        self.counts[decided.priority] += 1
        if decided.population:
            self.population_counts[decided.population] += 1
        if decided.population_source:
            self.population_source_counts[decided.population_source] += 1
        return decided.replace(site_file=self.site_file)

    def estimates(self, batch: ScoredBatch) -> list[float | None]:
        """The population estimate's probability per image of ``batch`` (None without an estimate in force)."""
        if self.estimate is None or batch.output.features is None:
            return [None] * len(batch)
        try:
            probs = self.estimate.probability(batch.output.features)
        except ValueError as exc:  # the manifest's weights do not fit the graph: triage goes on without the estimate
            log.warning("model '%s': %s; the population estimate is not used", self.manifest.name, exc)
            return [None] * len(batch)
        return [float(p) for p in probs]

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[ImageRecord]:
        return [self.decide(item.record if p is None else item.record.replace(population_probability=p))
                for item, p in zip(batch.items, self.estimates(batch), strict=True)]

    def on_unscored(self, record: ImageRecord, ctx: RunContext) -> ImageRecord:
        return self.decide(record)

    def on_finish(self, ctx: RunContext, summary: PredictSummary) -> TriageOutcome:
        """Write ``DIR/worklist.csv`` (atomically) from the results as written."""
        return self.finish(ctx, read_results(summary.results_jsonl).records)

    def finish(self, ctx: RunContext, records: Sequence[ImageRecord]) -> TriageOutcome:
        """Write ``DIR/worklist.csv`` (atomically) from ``records``, the whole results table as written (``serve`` and
        ``watch`` keep it in memory and call this after each batch).

        The image counts (by priority, by population) are taken from the records too: rows an earlier run scored
        (``--resume``, ``serve``) count as well as the ones decided in this process; a file that is no image (a README,
        a DICOM SR: ``ImageRecord.in_study``) is no "not assessed" image."""
        entries = build_worklist(records)
        path = write_worklist(ctx.out_dir / WORKLIST_CSV, entries)
        self.counts = Counter(r.priority for r in records if r.priority is not None and r.in_study)
        self.population_counts = Counter(r.population for r in records if r.population)
        self.population_source_counts = Counter(r.population_source for r in records if r.population_source)
        studies = Counter(e.priority for e in entries)
        self.outcome = TriageOutcome(
            worklist=path,
            images_by_priority={p.value: self.counts[p] for p in PRIORITY_LEVELS if self.counts[p]},
            studies_by_priority={p.value: studies[p] for p in PRIORITY_LEVELS if studies[p]},
            policy_name=self.policy.name,
            site_file=self.site_file,
            notes=tuple(self.notes),
            populations=dict(sorted(self.population_counts.items())),
            population_sources=dict(sorted(self.population_source_counts.items())),
            scores_only=self.scores_only,
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

    def study_provenance(self) -> dict[str, Any]:
        """How priorities were decided: per population, the labels that decide and the study-level thresholds in force
        with the sensitivity/specificity measured for them on held-out data (from the manifest)."""
        m = self.manifest
        mode = "none" if self.scores_only else "study" if study_mode(m, self.site) else "per_label"
        pops = [*m.populations, UNKNOWN_POPULATION] if m.populations else []
        out: dict[str, Any] = {
            "mode": mode,
            "default_population": self.population or (UNKNOWN_POPULATION if pops else None),
            "population_estimate": self.estimate_provenance(),
            "populations": {p.name: {"age_years": [p.age_min, p.age_max], "description": p.description}
                            for p in m.populations.values()},
            "deciding_labels": {p: deciding_labels(m, self.policy, p) for p in pops},
            "not_deciding_labels": {p: [lab for lab in m.labels if not self.policy.is_ignored(lab)
                                        and lab not in deciding_labels(m, self.policy, p)] for p in pops},
        }
        if mode != "study":
            return out
        study = m.study if self.site is None else None
        out["score"] = ("the highest calibrated probability (site score with a site file) among a tier's deciding "
                        "labels, over the study's images")
        tiers: dict[str, Any] = {}
        for tier in covered_tiers(self.policy, m):
            entry: dict[str, Any] = {"thresholds": {}}
            for p in pops:
                found = study_threshold(tier, p, m, self.site)
                if found is not None:
                    entry["thresholds"][p] = found[0]
                    entry["source"] = found[1]
            mt = study.tiers.get(tier) if study is not None else None
            st = self.site.study.get(tier) if self.site is not None else None
            if mt is not None:
                entry |= {"fitted_for": list(mt.labels), "target": mt.target, "held_out_test": mt.test}
            elif st is not None:
                entry |= {"target": st.target, "site_calibration_set": st.stats}
            tiers[tier] = entry
        out["tiers"] = tiers
        if study is not None and study.fitted_on:
            out["fitted_on"] = study.fitted_on
        return out

    def estimate_provenance(self) -> dict[str, Any] | None:
        """The image population estimate of the model and whether this run used it (None: the model has none)."""
        est = self.manifest.population_estimate
        if est is None:
            return None
        return {
            "in_use": self.estimate is not None,
            "why_not": "" if self.estimate is not None else f"--population {self.population} given",
            "estimates": est.estimates, "versus": est.versus, "threshold": est.threshold,
            "rule": ("used only when the DICOM gives no age and --population is not given: probability >= threshold -> "
                     f"{est.estimates}, else unknown"),
            "held_out_test": est.details.get("test", {}),
        }

    def provenance(self) -> dict[str, Any]:
        levels = {lvl.priority.value: {"findings": list(lvl.findings), "threshold": lvl.threshold.value,
                                       "covered_by_model": covered_findings(self.policy, self.manifest.labels)
                                       .get(lvl.priority.value, [])}
                  for lvl in self.policy.levels}
        counts: dict[str, Any] = {"images_by_priority": {p.value: self.counts[p] for p in PRIORITY_LEVELS}}
        if self.outcome is not None:
            counts["studies_by_priority"] = self.outcome.studies_by_priority
        return {
            "scores_only": self.scores_only,
            "operating_point": "none" if self.scores_only else operating_point(self.policy),
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
            "counts": counts | {"images_by_population": dict(sorted(self.population_counts.items()))}
            | ({"images_by_population_source": dict(sorted(self.population_source_counts.items()))}
               if self.manifest.population_estimate is not None else {}),
            "study_operating_points": self.study_provenance(),
            "notes": list(self.notes),
        }
