"""Evaluate results against labels: discrimination, operating points, calibration, subgroups, triage and misses.

``evaluate_results`` is pure (no I/O): the CLI reads the files, resolves the model and site, then renders
the ``Evaluation`` it returns as a table, JSON (``evaluation_to_dict``) or HTML.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from cxrtriage.errors import ConfigError
from cxrtriage.evaluate.data import LabelTable, MatchResult
from cxrtriage.evaluate.metrics import (
    BinaryStats,
    Reliability,
    auprc,
    auroc,
    bootstrap_ci,
    interval_withheld,
    reliability,
    stats_at,
    wilson_interval,
)
from cxrtriage.evaluate.study import TierResult, study_priority, tier_result, tier_truth
from cxrtriage.model.manifest import ModelManifest
from cxrtriage.results import ImageRecord, Priority
from cxrtriage.triage.policy import PopulationSource, TriagePolicy, scores_from_record, tier_labels, triage_record
from cxrtriage.triage.site import SiteCalibration

MISSING_GROUP = "(missing)"
TRUTH_CATEGORIES = ("critical finding", "urgent finding", "other finding", "negative", "unlabelled")
PRIORITY_ORDER = (Priority.CRITICAL, Priority.URGENT, Priority.ROUTINE, Priority.NORMAL, Priority.NOT_ASSESSED)


@dataclass(frozen=True, slots=True)
class OperatingPointResult:
    """Confusion statistics at one threshold in effect for a label, with Wilson 95 % intervals."""

    kind: str  # "rule_out" | "balanced"
    source: str  # "model" (manifest) | "site"
    threshold: float
    stats: BinaryStats
    sensitivity_ci: tuple[float, float]
    specificity_ci: tuple[float, float]
    expected_sensitivity: float | None = None  # what the manifest / site file promised


@dataclass(frozen=True, slots=True)
class LabelMetrics:
    label: str
    n: int
    n_positive: int
    auroc: float
    auroc_ci: tuple[float, float]
    auprc: float
    auprc_ci: tuple[float, float]
    ece: float
    reliability: Reliability
    operating_points: tuple[OperatingPointResult, ...]
    ci_note: str = ""  # why the AUROC/AUPRC intervals are not given, e.g. "too few positives (n=1)"; "" when they are

    @property
    def prevalence(self) -> float:
        return self.n_positive / self.n if self.n else math.nan


@dataclass(frozen=True, slots=True)
class Miss:
    """One badly scored case: a positive with a low score or a negative with a high one."""

    label: str
    kind: str  # "lowest-scored positive" | "highest-scored negative"
    path: str
    score: float
    missed: bool  # wrong at the operating point: a positive below rule-out, a negative at/above balanced
    groups: dict[str, str]


@dataclass(frozen=True, slots=True)
class MissCluster:
    """Misses of one label within one subgroup: positives below rule-out, negatives at/above balanced."""

    label: str
    column: str
    value: str
    n_positive: int
    n_missed: int
    n_negative: int
    n_false_alarm: int

    @property
    def miss_rate(self) -> float:
        return self.n_missed / self.n_positive if self.n_positive else math.nan

    @property
    def false_alarm_rate(self) -> float:
        return self.n_false_alarm / self.n_negative if self.n_negative else math.nan


@dataclass(frozen=True, slots=True)
class PriorityConfusion:
    """Triage priority (rows) against the truth category of each matched image (columns)."""

    counts: dict[str, dict[str, int]]  # priority -> truth category -> n
    source: str  # "results" (priorities as written) or "policy <name>" (recomputed)
    positives_called_normal: int
    positives_assessed: int
    normal_total: int
    normal_negative: int
    critical_truth: int
    critical_truth_flagged_critical: int
    critical_truth_flagged_urgent_or_critical: int
    urgent_truth: int
    urgent_truth_flagged_urgent_or_critical: int


@dataclass(frozen=True, slots=True)
class Evaluation:
    results_path: str
    labels_path: str
    model: dict[str, str]
    site_file: str | None
    n_results: int
    n_label_rows: int
    n_matched: int
    n_matched_scored: int
    matched_by: dict[str, int]
    unmatched_labels: list[dict[str, Any]]  # {"row", "image", "reason"}
    unmatched_results: list[dict[str, Any]]  # {"path", "status"}
    not_scored: list[dict[str, Any]]  # matched label rows whose image was excluded/failed
    labels: dict[str, LabelMetrics]
    not_evaluated: dict[str, str]  # model label -> why
    subgroups: dict[str, dict[str, dict[str, LabelMetrics]]]  # column -> value -> label -> metrics
    priority: PriorityConfusion | None
    misses: dict[str, list[Miss]]
    clusters: dict[str, list[MissCluster]]
    warnings: list[str]
    n_boot: int
    study_tiers: list[TierResult] = field(default_factory=list)
    n_studies: int = 0
    top_k: int = 5  # lowest-scored positives and highest-scored negatives kept per label (``misses``)
    # raw arrays for plots (label -> (truth, score) of evaluated cases)
    curves: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = field(default_factory=dict)


def _thresholds(label: str, manifest: ModelManifest, site: SiteCalibration | None) -> list[tuple[str, str, float, float | None]]:
    """(kind, source, threshold, promised sensitivity) in effect for ``label``: the site's when it calibrated it."""
    if site is not None and label in site.labels:
        cal = site.labels[label]
        ro_sens = cal.stats.get("rule_out_sensitivity")
        ba_sens = cal.stats.get("balanced_sensitivity")
        return [("rule_out", "site", cal.rule_out, None if ro_sens is None else float(ro_sens)),
                ("balanced", "site", cal.balanced, None if ba_sens is None else float(ba_sens))]
    lt = manifest.thresholds.get(label)
    if lt is None:
        return []
    return [("rule_out", "model", lt.rule_out.threshold, lt.rule_out.sensitivity),
            ("balanced", "model", lt.balanced.threshold, lt.balanced.sensitivity)]


def label_metrics(
    label: str,
    y: NDArray[np.float64],
    s: NDArray[np.float64],
    thresholds: Sequence[tuple[str, str, float, float | None]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> LabelMetrics:
    """All per-label figures on cases where both truth and score are known."""
    keep = np.isfinite(y) & np.isfinite(s)
    y, s = y[keep], s[keep]
    n, n_pos = int(y.size), int(y.sum())
    ops = []
    for kind, src, t, promised in thresholds:
        st = stats_at(y, s, t)
        ops.append(OperatingPointResult(kind, src, float(t), st, wilson_interval(st.tp, st.tp + st.fn),
                                        wilson_interval(st.tn, st.tn + st.fp), promised))
    both = 0 < n_pos < n
    # No bootstrap interval from a handful of cases of one class (metrics.MIN_PER_CLASS_FOR_INTERVAL says why): the
    # point estimate stays, the interval is replaced by the reason. The Wilson intervals of the operating points stay:
    # they are valid for small counts and show it by their width.
    ci_note = interval_withheld(n_pos, n - n_pos) if both and n_boot else ""
    boot = both and bool(n_boot) and not ci_note
    return LabelMetrics(
        label=label,
        n=n,
        n_positive=n_pos,
        auroc=auroc(y, s) if both else math.nan,
        auroc_ci=bootstrap_ci(auroc, y, s, n_boot=n_boot, seed=seed) if boot else (math.nan, math.nan),
        auprc=auprc(y, s) if n_pos else math.nan,
        auprc_ci=bootstrap_ci(auprc, y, s, n_boot=n_boot, seed=seed) if boot else (math.nan, math.nan),
        ece=reliability(y, s).ece if n else math.nan,
        reliability=reliability(y, s),
        operating_points=tuple(ops),
        ci_note=ci_note,
    )


def _group_values(table: LabelTable, column: str, rows: Sequence[int]) -> list[str]:
    """Subgroup value per matched labels row; numeric columns with many values are cut into quartiles."""
    raw = [(table.rows[j].get(column) or "").strip() for j in rows]
    nums: list[float] = []
    for v in raw:
        try:
            nums.append(float(v))
        except ValueError:
            if v:
                return [v or MISSING_GROUP for v in raw]
    distinct = {v for v in raw if v}
    if len(distinct) <= 8 or not nums:
        return [v or MISSING_GROUP for v in raw]
    edges = np.unique(np.quantile(np.array(nums), [0.0, 0.25, 0.5, 0.75, 1.0]))
    out = []
    for v in raw:
        if not v:
            out.append(MISSING_GROUP)
            continue
        x = float(v)
        k = int(np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(edges) - 2))
        hi_br = "]" if k == len(edges) - 2 else ")"
        out.append(f"[{edges[k]:g}, {edges[k + 1]:g}{hi_br}")
    return out


def _group_key(value: str) -> tuple[int, float, str]:
    """Sort subgroup values numerically when they are numbers or "[lo, hi)" bins, else by text; missing last."""
    if value == MISSING_GROUP:
        return (2, 0.0, value)
    try:
        return (0, float(value.lstrip("[").split(",")[0]), value)
    except ValueError:
        return (1, 0.0, value)


def _finding_kind(name: str, policy: TriagePolicy) -> str:
    """What a positive of finding ``name`` makes an image under ``policy``: its truth category."""
    level = policy.level_of(name)
    if level is not None and level.priority is Priority.CRITICAL:
        return "critical finding"
    if level is not None and level.priority is Priority.URGENT:
        return "urgent finding"
    return "other finding"


def _truth_category(truths: Mapping[str, float], policy: TriagePolicy) -> str:
    known = {lab: v for lab, v in truths.items() if math.isfinite(v) and not policy.is_ignored(lab)}
    if not known:
        return "unlabelled"
    kinds = {_finding_kind(lab, policy) for lab, v in known.items() if v == 1}
    for kind in ("critical finding", "urgent finding", "other finding"):
        if kind in kinds:
            return kind
    return "negative"


def evaluate_results(
    results: Sequence[ImageRecord],
    table: LabelTable,
    match: MatchResult,
    *,
    manifest: ModelManifest,
    policy: TriagePolicy,
    site: SiteCalibration | None = None,
    recompute_priority: bool = False,
    by: Sequence[str] = (),
    n_boot: int = 1000,
    seed: int = 0,
    top_k: int = 5,
    results_path: str = "",
) -> Evaluation:
    """Evaluate matched results against labels (see the module docstring). Pure."""
    warnings: list[str] = []
    for col in by:
        if col not in table.subgroup_columns:
            raise ConfigError(
                f"--by {col}: no such subgroup column in {table.path}; subgroup columns are {list(table.subgroup_columns)}"
            )
    pairs = match.pairs
    res_idx = [i for i, _ in pairs]
    lab_idx = [j for _, j in pairs]
    scored = np.array([results[i].scored for i in res_idx], dtype=bool)
    labels_eval = [lab for lab in manifest.labels if lab in table.label_columns]
    not_evaluated = {lab: f"no column named like '{lab}' in the labels CSV" for lab in manifest.labels
                     if lab not in table.label_columns}
    extra = [c for c in table.other_truth if not policy.is_ignored(c)]
    if extra:
        kinds = "; ".join(f"{c}: {_finding_kind(c, policy)}" for c in extra)
        warnings.append(
            f"0/1 columns {extra} name no label of model '{manifest.name}': they get no metrics of their own, but their "
            f"positives count in the triage truth ({kinds}) and they can be --by subgroups; list a 0/1 column that is "
            "not a finding under [labels] ignore of a --policy file"
        )
    score_rows = [scores_from_record(results[i], manifest.labels) for i in res_idx]
    groups = {col: _group_values(table, col, lab_idx) for col in by}

    label_results: dict[str, LabelMetrics] = {}
    curves: dict[str, tuple[NDArray[np.float64], NDArray[np.float64]]] = {}
    subgroups: dict[str, dict[str, dict[str, LabelMetrics]]] = {col: {} for col in by}
    misses: dict[str, list[Miss]] = {}
    clusters: dict[str, list[MissCluster]] = {}
    for lab in labels_eval:
        y = np.where(scored, table.truth[lab][lab_idx], np.nan) if pairs else np.zeros(0)
        s = np.array([r[lab] for r in score_rows], dtype=np.float64)
        thr = _thresholds(lab, manifest, site)
        if not thr:
            warnings.append(f"{lab}: no thresholds in the manifest or site file; operating points not reported")
        m = label_metrics(lab, y, s, thr, n_boot=n_boot, seed=seed)
        label_results[lab] = m
        keep = np.isfinite(y) & np.isfinite(s)
        curves[lab] = (y[keep], s[keep])
        if m.n and m.n_positive in (0, m.n):
            warnings.append(f"{lab}: only one class among {m.n} labelled images; AUROC is undefined")
        for col in by:
            vals = np.array(groups[col], dtype=object)
            for v in sorted(set(groups[col]), key=_group_key):
                sel = vals == v
                if not np.any(sel & scored):
                    continue  # e.g. view=LL: only excluded images, nothing to evaluate
                subgroups[col].setdefault(v, {})[lab] = label_metrics(lab, y[sel], s[sel], thr, n_boot=n_boot, seed=seed)
        # worst misses and where they cluster
        ro = next((t for k, _, t, _ in thr if k == "rule_out"), None)
        ba = next((t for k, _, t, _ in thr if k == "balanced"), None)
        idx = np.where(keep)[0]
        pos = idx[y[idx] == 1]
        neg = idx[y[idx] == 0]
        lab_misses = []
        for kind, chosen in (("lowest-scored positive", pos[np.argsort(s[pos], kind="mergesort")][:top_k]),
                             ("highest-scored negative", neg[np.argsort(-s[neg], kind="mergesort")][:top_k])):
            for k in chosen:
                missed = (s[k] < ro) if kind.endswith("positive") and ro is not None else \
                    (s[k] >= ba) if kind.endswith("negative") and ba is not None else False
                lab_misses.append(Miss(lab, kind, results[res_idx[k]].path, float(s[k]), bool(missed),
                                       {col: groups[col][k] for col in by}))
        misses[lab] = lab_misses
        lab_clusters = []
        for col in by:
            vals = np.array(groups[col], dtype=object)
            for v in sorted(set(groups[col]), key=_group_key):
                sel = (vals == v) & keep
                if not np.any((vals == v) & scored):
                    continue
                p_sel, n_sel = sel & (y == 1), sel & (y == 0)
                lab_clusters.append(MissCluster(
                    lab, col, v, int(p_sel.sum()), int((p_sel & (s < ro)).sum()) if ro is not None else 0,
                    int(n_sel.sum()), int((n_sel & (s >= ba)).sum()) if ba is not None else 0))
        clusters[lab] = lab_clusters

    priority = _priority_confusion(results, table, match, manifest=manifest, policy=policy, site=site,
                                   recompute=recompute_priority)
    n_studies, study_tiers = _study_tiers(results, table, match, manifest=manifest, policy=policy, site=site,
                                          recompute=recompute_priority)
    if priority is None:
        warnings.append("results have no priority column and no policy was given: triage confusion not computed")

    unmatched_labels = [{"row": j + 2, "image": (table.rows[j].get(table.image_column or "") or
                                                 table.rows[j].get(table.uid_column or "") or ""), "reason": why}
                        for j, why in match.unmatched_labels]
    unmatched_results = [{"path": results[i].path, "status": results[i].status.value}
                         for i in match.unmatched_results]
    not_scored = [{"path": results[i].path, "status": results[i].status.value, "reason": results[i].reason or ""}
                  for i in res_idx if not results[i].scored]
    if unmatched_labels:
        warnings.append(f"{len(unmatched_labels)} of {len(table)} labels rows matched no results row (listed under 'unmatched')")
    n_unmatched_scored = sum(1 for r in unmatched_results if r["status"] == "scored")
    if n_unmatched_scored:
        warnings.append(f"{n_unmatched_scored} scored results rows have no labels row and are not in the metrics")
    if not_scored:
        warnings.append(f"{len(not_scored)} labelled images were not scored (excluded or failed); they count as not_assessed")
    return Evaluation(
        results_path=results_path,
        labels_path=str(table.path),
        model={"name": manifest.name, "version": manifest.version, "sha256": manifest.sha256},
        site_file=str(site.path) if site is not None and site.path else None,
        n_results=len(results),
        n_label_rows=len(table),
        n_matched=len(pairs),
        n_matched_scored=int(scored.sum()),
        matched_by=dict(match.how),
        unmatched_labels=unmatched_labels,
        unmatched_results=unmatched_results,
        not_scored=not_scored,
        labels=label_results,
        not_evaluated=not_evaluated,
        subgroups=subgroups,
        priority=priority,
        misses=misses,
        clusters=clusters,
        warnings=warnings,
        n_boot=n_boot,
        study_tiers=study_tiers,
        n_studies=n_studies,
        top_k=top_k,
        curves=curves,
    )


def _priority_confusion(
    results: Sequence[ImageRecord],
    table: LabelTable,
    match: MatchResult,
    *,
    manifest: ModelManifest,
    policy: TriagePolicy,
    site: SiteCalibration | None,
    recompute: bool,
) -> PriorityConfusion | None:
    have = any(results[i].priority is not None for i, _ in match.pairs)
    if not have and not recompute:
        recompute = True  # priorities were never written: derive them with the policy given (default or --policy)
    counts = {p.value: dict.fromkeys(TRUTH_CATEGORIES, 0) for p in PRIORITY_ORDER}
    stats = dict.fromkeys(("pcn", "pa", "nt", "nn", "ct", "ctc", "ctu", "ut", "utu"), 0)
    for i, j in match.pairs:
        record = (triage_record(results[i], manifest=manifest, policy=policy, site=site,
                               default_population=_option_population(results[i])) if recompute else results[i])
        prio = record.priority or Priority.NOT_ASSESSED
        # Every finding of the labels row, the model's labels or not (LabelTable.findings says why).
        cat = _truth_category(table.findings(j, policy), policy)
        counts[prio.value][cat] += 1
        positive = cat in ("critical finding", "urgent finding", "other finding")
        if positive and prio is not Priority.NOT_ASSESSED:
            stats["pa"] += 1
            stats["pcn"] += prio is Priority.NORMAL
        if prio is Priority.NORMAL and cat != "unlabelled":
            stats["nt"] += 1
            stats["nn"] += cat == "negative"
        if cat == "critical finding":
            stats["ct"] += 1
            stats["ctc"] += prio is Priority.CRITICAL
            stats["ctu"] += prio in (Priority.CRITICAL, Priority.URGENT)
        if cat == "urgent finding":
            stats["ut"] += 1
            stats["utu"] += prio in (Priority.CRITICAL, Priority.URGENT)
    return PriorityConfusion(
        counts=counts,
        source=f"policy '{policy.name}' ({policy.source})" if recompute else "results (priority column)",
        positives_called_normal=stats["pcn"], positives_assessed=stats["pa"],
        normal_total=stats["nt"], normal_negative=stats["nn"],
        critical_truth=stats["ct"], critical_truth_flagged_critical=stats["ctc"],
        critical_truth_flagged_urgent_or_critical=stats["ctu"],
        urgent_truth=stats["ut"], urgent_truth_flagged_urgent_or_critical=stats["utu"],
    )


def _option_population(record: ImageRecord) -> str | None:
    """The ``--population`` a results row was decided with, for deciding it again: its population when that came from
    the option (or from a row written before ``population_source`` existed); an age or an image estimate is decided
    again from the row itself (``patient_age``, ``population_probability``)."""
    if record.population_source in (None, "", PopulationSource.OPTION.value):
        return record.population
    return None


def _study_tiers(
    results: Sequence[ImageRecord],
    table: LabelTable,
    match: MatchResult,
    *,
    manifest: ModelManifest,
    policy: TriagePolicy,
    site: SiteCalibration | None,
    recompute: bool,
) -> tuple[int, list[TierResult]]:
    """Study-level sensitivity/specificity of each tier, for all studies and per population (``evaluate.study``).

    A study is the images sharing a StudyInstanceUID (an image without one is its own study: a folder of PNGs holds
    many patients); it takes the highest priority of its assessed images (as the worklist does) and each label's
    highest truth. Studies with no assessed image are left out (they are read unaided). Truth is that of every finding
    of the labels, the model's labels or not (``LabelTable.findings``): a pneumothorax column makes the ``critical``
    tier's positives even for a model that cannot flag it.
    """
    if not match.pairs:
        return 0, []
    recompute = recompute or not any(results[i].priority is not None for i, _ in match.pairs)
    priorities: dict[str, list[Priority]] = {}
    truth: dict[str, dict[str, float]] = {}
    population: dict[str, str] = {}
    for i, j in match.pairs:
        rec = (triage_record(results[i], manifest=manifest, policy=policy, site=site,
                             default_population=_option_population(results[i]))
               if recompute else results[i])
        key = rec.study_instance_uid or rec.path
        priorities.setdefault(key, []).append(rec.priority or Priority.NOT_ASSESSED)
        population[key] = population.get(key) or rec.population or ""
        t = truth.setdefault(key, {})
        for lab, v in table.findings(j, policy).items():
            if math.isfinite(v):
                t[lab] = max(v, t.get(lab, -math.inf))
    prio = {k: study_priority(v) for k, v in priorities.items()}
    assessed = [k for k, p in prio.items() if p is not Priority.NOT_ASSESSED]
    pops = sorted({population[k] for k in assessed if population[k]})
    groups = ["all studies", *pops] if len(pops) > 1 else ["all studies"]
    out: list[TierResult] = []
    for tier, names in tier_labels(policy, table.finding_names(policy)).items():
        for group in groups:
            keys = [k for k in assessed if group == "all studies" or population[k] == group]
            res = tier_result(tier, group, ((prio[k], tier_truth(truth[k], names)) for k in keys))
            if res.n_pos or res.n_neg:
                out.append(res)
    return len(prio), out


# --------------------------------------------------------------------------------------------- JSON


def _clean(v: Any) -> Any:
    if isinstance(v, float | np.floating):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.ndarray):
        return [_clean(x) for x in v.tolist()]
    if isinstance(v, tuple | list):
        return [_clean(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, Path):
        return str(v)
    return v


def _op_dict(op: OperatingPointResult) -> dict[str, Any]:
    st = op.stats
    return {"kind": op.kind, "source": op.source, "threshold": op.threshold, "tp": st.tp, "fp": st.fp, "tn": st.tn,
            "fn": st.fn, "sensitivity": st.sensitivity, "sensitivity_ci95": op.sensitivity_ci,
            "specificity": st.specificity, "specificity_ci95": op.specificity_ci, "ppv": st.ppv, "npv": st.npv,
            "expected_sensitivity": op.expected_sensitivity}


def label_metrics_dict(m: LabelMetrics) -> dict[str, Any]:
    rel = m.reliability
    out: dict[str, Any] = _clean({
        "n": m.n, "n_positive": m.n_positive, "prevalence": m.prevalence,
        "auroc": m.auroc, "auroc_ci95": m.auroc_ci, "auprc": m.auprc, "auprc_ci95": m.auprc_ci,
        "ci95_note": m.ci_note or None,
        "ece": m.ece,
        "reliability": {"bin_edges": rel.bin_edges, "mean_predicted": rel.mean_predicted, "observed": rel.observed,
                        "counts": rel.counts},
        "operating_points": [_op_dict(op) for op in m.operating_points],
    })
    return out


def evaluation_to_dict(ev: Evaluation) -> dict[str, Any]:
    """A JSON-ready dict (NaN written as null) of everything in the evaluation except the raw curves."""
    pc = ev.priority
    out: dict[str, Any] = _clean({
        "results": ev.results_path,
        "labels": ev.labels_path,
        "model": ev.model,
        "site_file": ev.site_file,
        "bootstrap_resamples": ev.n_boot,
        "matching": {
            "results_rows": ev.n_results, "labels_rows": ev.n_label_rows, "matched": ev.n_matched,
            "matched_scored": ev.n_matched_scored, "matched_by": ev.matched_by,
            "unmatched_labels": ev.unmatched_labels, "unmatched_results": ev.unmatched_results,
            "matched_not_scored": ev.not_scored,
        },
        "labels_metrics": {lab: label_metrics_dict(m) for lab, m in ev.labels.items()},
        "not_evaluated": ev.not_evaluated,
        "subgroups": {col: {v: {lab: label_metrics_dict(m) for lab, m in d.items()} for v, d in vals.items()}
                      for col, vals in ev.subgroups.items()},
        "priority": None if pc is None else {
            "source": pc.source,
            "counts": pc.counts,
            "positives_called_normal": pc.positives_called_normal,
            "positives_assessed": pc.positives_assessed,
            "normal_total": pc.normal_total,
            "normal_negative": pc.normal_negative,
            "critical_truth": pc.critical_truth,
            "critical_truth_flagged_critical": pc.critical_truth_flagged_critical,
            "critical_truth_flagged_urgent_or_critical": pc.critical_truth_flagged_urgent_or_critical,
            "urgent_truth": pc.urgent_truth,
            "urgent_truth_flagged_urgent_or_critical": pc.urgent_truth_flagged_urgent_or_critical,
        },
        "study_level": {
            "studies": ev.n_studies,
            "tiers": [{"tier": t.tier, "group": t.group, "n_pos": t.n_pos, "n_neg": t.n_neg,
                       "sensitivity": t.sensitivity, "sensitivity_ci95": t.sensitivity_ci,
                       "specificity": t.specificity, "specificity_ci95": t.specificity_ci} for t in ev.study_tiers],
        },
        "misses": {lab: [{"kind": m.kind, "path": m.path, "score": m.score, "missed": m.missed, "groups": m.groups}
                         for m in ms] for lab, ms in ev.misses.items()},
        "miss_clusters": {lab: [{"column": c.column, "value": c.value, "n_positive": c.n_positive, "n_missed": c.n_missed,
                                 "miss_rate": c.miss_rate, "n_negative": c.n_negative, "n_false_alarm": c.n_false_alarm,
                                 "false_alarm_rate": c.false_alarm_rate} for c in cs] for lab, cs in ev.clusters.items()},
        "warnings": ev.warnings,
    })
    return out


__all__ = [
    "Evaluation",
    "LabelMetrics",
    "Miss",
    "MissCluster",
    "OperatingPointResult",
    "PriorityConfusion",
    "TierResult",
    "evaluate_results",
    "evaluation_to_dict",
    "label_metrics",
    "label_metrics_dict",
]
