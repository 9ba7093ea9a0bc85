"""Fit a site calibration on a labelled local set: score maps (Platt or isotonic) and site thresholds.

The site map takes the MODEL's calibrated score to a site score; ``rule_out`` is then the highest site
threshold reaching the target sensitivity but never above ``balanced``, the Youden threshold, both on the site score.
``calibrate_results`` is the whole ``cxrtriage calibrate`` command: read, check, match, fit, write.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cxrtriage.errors import ConfigError, InputError, ModelError
from cxrtriage.evaluate.data import LabelTable, match_labels, read_labels
from cxrtriage.evaluate.metrics import (
    MIN_PER_CLASS_FOR_INTERVAL,
    auroc,
    between_cases,
    clean_binary,
    positives_for_precision,
    rule_out_threshold,
    stats_at,
    threshold_for_max_share,
    threshold_for_sensitivity,
    wilson_interval,
    youden_threshold,
)
from cxrtriage.evaluate.study import TierResult, tier_result, tier_truth
from cxrtriage.model.manifest import UNKNOWN_POPULATION, ModelManifest
from cxrtriage.model.registry import manifest_for_results
from cxrtriage.results import ImageRecord, ResultsTable, read_results, recorded_manifest
from cxrtriage.triage.policy import (
    TriagePolicy,
    decide_priority,
    deciding_labels,
    load_policy,
    population_for,
    scores_from_record,
    tier_labels,
)
from cxrtriage.triage.site import (
    ALL_POPULATIONS,
    METHODS,
    LabelSiteCalibration,
    SiteCalibration,
    SiteStudyTier,
    apply_site,
    write_site,
)

MIN_POSITIVES = MIN_PER_CLASS_FOR_INTERVAL  # one missed case moves sensitivity by more than 5 points below it
MAX_CI_HALF_WIDTH = 0.10
DEFAULT_MAX_FALSE_URGENT = 0.05
_EPS = 1e-7


def _xy(scores: ArrayLike, truth: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Scores and 0/1 truth as float arrays (validated by ``metrics.clean_binary``)."""
    y, p = clean_binary(truth, scores)
    return p, y.astype(np.float64)


def fit_platt(scores: ArrayLike, truth: ArrayLike, *, max_iter: int = 100, tol: float = 1e-10) -> tuple[float, float]:
    """Platt scaling on the logit of the model score: site = sigmoid(a * logit(score) + b).

    Newton's method with backtracking on the log-loss, with Platt's (1999) smoothed targets
    (N+ + 1)/(N+ + 2) and 1/(N- + 2), which keep a and b finite on separable data.
    """
    p, y = _xy(scores, truth)
    n_pos, n_neg = float(y.sum()), float(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Platt scaling needs both positives and negatives")
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))
    q = np.clip(p, _EPS, 1 - _EPS)
    z = np.log(q) - np.log1p(-q)
    X = np.stack([z, np.ones_like(z)], axis=1)

    def loss(w: NDArray[np.float64]) -> float:
        f = X @ w
        # log(1 + exp(f)) - t f, computed stably
        return float(np.sum(np.logaddexp(0.0, f) - t * f))

    w = np.array([1.0, 0.0])
    cur = loss(w)
    for _ in range(max_iter):
        f = X @ w
        s = 0.5 * (1.0 + np.tanh(0.5 * f))
        grad = X.T @ (s - t)
        hess = (X * (s * (1 - s))[:, None]).T @ X + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        lr = 1.0
        while lr > 1e-8:
            w_new = w - lr * step
            new = loss(w_new)
            if new <= cur:
                break
            lr *= 0.5
        else:
            break
        done = cur - new < tol * max(1.0, abs(cur))
        w, cur = w_new, new
        if done:
            break
    return float(w[0]), float(w[1])


def fit_isotonic(scores: ArrayLike, truth: ArrayLike) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Isotonic (non-decreasing) regression of truth on score by pool-adjacent-violators.

    Returns knots (x, y) for piecewise-linear interpolation: each pooled block contributes its lowest and
    highest score at the block's mean (as scikit-learn's IsotonicRegression keeps them).
    """
    p, y = _xy(scores, truth)
    if p.size == 0:
        raise ValueError("isotonic regression needs at least one case")
    order = np.argsort(p, kind="mergesort")
    p, y = p[order], y[order]
    # Equal scores first form one block each (their mean truth), so ties never split.
    ux, start, counts = np.unique(p, return_index=True, return_counts=True)
    sums = np.add.reduceat(y, start)
    means: list[float] = []
    weights: list[float] = []
    lo_x: list[float] = []
    hi_x: list[float] = []
    for xv, s, c in zip(ux, sums, counts, strict=True):
        means.append(s / c)
        weights.append(float(c))
        lo_x.append(float(xv))
        hi_x.append(float(xv))
        while len(means) > 1 and means[-2] >= means[-1]:
            w = weights[-2] + weights[-1]
            m = (means[-2] * weights[-2] + means[-1] * weights[-1]) / w
            means[-2:], weights[-2:] = [m], [w]
            hi_x[-2:] = [hi_x[-1]]
            lo_x.pop()
    xs: list[float] = []
    ys: list[float] = []
    for lo, hi, m in zip(lo_x, hi_x, means, strict=True):
        xs.append(lo)
        ys.append(float(m))
        if hi > lo:
            xs.append(hi)
            ys.append(float(m))
    return tuple(xs), tuple(ys)


def _between(scores: NDArray[np.float64], threshold: float) -> float:
    return between_cases(scores, threshold)


@dataclass(frozen=True, slots=True)
class LabelFit:
    """What fitting one label gave: the calibration (or None when skipped) and warnings in plain words."""

    label: str
    calibration: LabelSiteCalibration | None
    warnings: tuple[str, ...]


def fit_label(
    label: str,
    scores: ArrayLike,
    truth: ArrayLike,
    *,
    method: str = "platt",
    target_sensitivity: float = 0.95,
) -> LabelFit:
    """Fit one label's site map and thresholds; warns when the set is too small for the requested precision."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got '{method}'")
    p, y = _xy(scores, truth)
    n, n_pos = int(y.size), int(y.sum())
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return LabelFit(label, None, (f"{label}: {n_pos} positives and {n_neg} negatives among {n} labelled images; "
                                      "both are needed, so this label keeps the model's scores and thresholds",))
    warnings: list[str] = []
    auc = auroc(y, p)
    if method == "platt":
        a, b = fit_platt(p, y)
        if not a > 0:
            return LabelFit(label, None, (
                f"{label}: the model's scores do not rise with the local labels (AUROC {auc:.2f}, Platt slope {a:.3f}); "
                "not calibrated. Do not rely on this finding at this site until the cause is understood",))
        cal = LabelSiteCalibration(label, "platt", rule_out=0.0, balanced=0.0, a=a, b=b)
    else:
        xs, ys = fit_isotonic(p, y)
        cal = LabelSiteCalibration(label, "isotonic", rule_out=0.0, balanced=0.0, x=xs, y=ys)
        if len(set(ys)) <= 2:
            warnings.append(f"{label}: the isotonic map has only {len(set(ys))} distinct level(s) (AUROC {auc:.2f}); "
                            "it hardly separates cases: consider --method platt or more data")
    site_scores = cal.apply(p)
    youden = youden_threshold(y, site_scores)
    # Never above balanced (metrics.rule_out_threshold): a policy picks rule_out to be the more sensitive point.
    rule_out = _between(site_scores, rule_out_threshold(y, site_scores, target_sensitivity, balanced=youden))
    balanced = _between(site_scores, youden)
    ro, ba = stats_at(y, site_scores, rule_out), stats_at(y, site_scores, balanced)
    ci = wilson_interval(ro.tp, ro.tp + ro.fn)
    stats: dict[str, Any] = {
        "auroc": auc,
        "rule_out_sensitivity": ro.sensitivity, "rule_out_specificity": ro.specificity,
        "rule_out_sensitivity_ci95": [ci[0], ci[1]],
        "balanced_sensitivity": ba.sensitivity, "balanced_specificity": ba.specificity,
    }
    if n_pos < MIN_POSITIVES:
        warnings.append(
            f"{label}: only {n_pos} positives; with fewer than {MIN_POSITIVES}, one missed case moves sensitivity by "
            f"{100 / n_pos:.0f} points, so the {target_sensitivity:.0%} target cannot be checked"
        )
    half = (ci[1] - ci[0]) / 2
    if half > MAX_CI_HALF_WIDTH:
        need = positives_for_precision(target_sensitivity, MAX_CI_HALF_WIDTH)
        warnings.append(
            # three decimals when two would print the limit itself ("±0.10, wider than ±0.10" for 0.102)
            f"{label}: the 95% CI on sensitivity at the rule-out threshold is {ci[0]:.2f}-{ci[1]:.2f} "
            f"(±{half:.{2 if round(half, 2) > MAX_CI_HALF_WIDTH else 3}f}, wider "
            f"than ±{MAX_CI_HALF_WIDTH:.2f}) with {n_pos} positives; about {need} positives are needed "
            f"for ±{MAX_CI_HALF_WIDTH:.2f}"
        )
    cal = LabelSiteCalibration(
        label, cal.method, rule_out=float(rule_out), balanced=float(balanced), a=cal.a, b=cal.b, x=cal.x, y=cal.y,
        n=n, n_positive=n_pos, stats={k: v for k, v in stats.items() if not (isinstance(v, float) and math.isnan(v))},
    )
    return LabelFit(label, cal, tuple(warnings))


def fit_site(
    scores: Mapping[str, ArrayLike],
    truth: Mapping[str, ArrayLike],
    *,
    model_name: str,
    model_version: str,
    model_sha256: str,
    method: str = "platt",
    target_sensitivity: float = 0.95,
    source: Mapping[str, Any] | None = None,
) -> tuple[SiteCalibration, list[LabelFit]]:
    """Fit every label present in both ``scores`` and ``truth``; returns the site file and per-label fits."""
    if not 0.0 < target_sensitivity < 1.0:
        raise ValueError(f"target sensitivity must be between 0 and 1 (exclusive), got {target_sensitivity}")
    fits = [fit_label(lab, scores[lab], truth[lab], method=method, target_sensitivity=target_sensitivity)
            for lab in scores if lab in truth]
    site = SiteCalibration(
        model_name=model_name,
        model_version=model_version,
        model_sha256=model_sha256.lower(),
        method=method,
        target_sensitivity=float(target_sensitivity),
        labels={f.label: f.calibration for f in fits if f.calibration is not None},
        created=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        source=dict(source or {}),
    )
    return site, fits


# --------------------------------------------------------------------------------------------- the command


# --------------------------------------------------------------------------------------------- study level


@dataclass(frozen=True, slots=True)
class StudyFit:
    """The study-level part of a site calibration: the tiers fitted (None when they could not be) and why not."""

    tiers: dict[str, SiteStudyTier] | None
    achieved: tuple[TierResult, ...]  # what the whole decision gives on the local set with the site file
    n_studies: int
    population: str  # the population key the thresholds were written for ("all" = every population)
    warnings: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Study:
    scores: dict[str, float]  # per label, the highest site score over the study's scored images
    truth: dict[str, float]  # per label, the highest truth
    population: str


def _studies(records: list[ImageRecord], pairs: list[tuple[int, int]], table: LabelTable, policy: TriagePolicy,
             site: SiteCalibration, manifest: ModelManifest, population: str | None = None) -> list[_Study]:
    """Scored, labelled images grouped into studies (StudyInstanceUID, else the image itself) on the site scale.

    A study's truth is that of every finding of the labels, the model's labels or not (``LabelTable.findings``): a
    study whose only finding is a pneumothorax column is abnormal, so the ``normal`` threshold is set to keep it from
    being called normal as well. A study's population is its images' (from their age), else ``population`` (the one
    calibrated for), else unknown.
    """
    out: dict[str, _Study] = {}
    for i, j in pairs:
        rec = records[i]
        key = rec.study_instance_uid or rec.path
        site_scores = apply_site(scores_from_record(rec, manifest.labels), site)
        pop = population_for(manifest, rec.patient_age, population or rec.population)[0] or UNKNOWN_POPULATION
        st = out.setdefault(key, _Study({}, {}, pop))
        for lab, v in site_scores.items():
            if math.isfinite(v):
                st.scores[lab] = max(v, st.scores.get(lab, -math.inf))
        for lab, t in table.findings(j, policy).items():
            if math.isfinite(t):
                st.truth[lab] = max(t, st.truth.get(lab, -math.inf))
    return list(out.values())


def fit_study(
    studies: list[_Study],
    *,
    manifest: ModelManifest,
    policy: TriagePolicy,
    site: SiteCalibration,
    target_sensitivity: float,
    max_false_urgent: float,
    population: str = ALL_POPULATIONS,
) -> StudyFit:
    """Fit the site's study-level thresholds on the local studies and measure what the whole decision then gives.

    ``normal``: the highest threshold at which at least ``target_sensitivity`` of the abnormal studies are not called
    normal; ``urgent``/``critical``: the lowest threshold at which at most ``max_false_urgent`` of the studies without
    a finding of that tier are flagged. Each study's score is the highest site score among the labels that decide for
    its own population (``triage.deciding_labels``). Thresholds sit halfway between two studies' scores.
    """
    warnings: list[str] = []
    known = sorted({st.population for st in studies} - {UNKNOWN_POPULATION})
    if population == ALL_POPULATIONS and len(known) == 1 and len(manifest.populations) > 1:
        # Why: a site file's "all" thresholds apply to every population, and a map fitted on children's studies
        # called adults' effusions normal (an audit: 19 of 35 abnormal adult studies). Said, not refused: the user
        # may know their site serves one population only.
        warnings.append(f"every labelled study of known population is {known[0]}: the study thresholds written for "
                        f"every population come from {known[0]} studies alone, and predict --site applies them to all "
                        f"patients; pass --population {known[0]} to write them for that population only")
    # Scores come from the model's labels; truth from every finding the studies carry, the model's labels or not.
    model_tiers = tier_labels(policy, list(manifest.labels))
    score_labels = {t: (names if t != "urgent" else [lab for lab in names if lab not in model_tiers.get("critical", [])])
                    for t, names in model_tiers.items()}
    findings = list(dict.fromkeys([*manifest.labels, *(lab for st in studies for lab in st.truth)]))
    truth_labels = tier_labels(policy, findings)
    tiers: dict[str, SiteStudyTier] = {}
    for tier, names in score_labels.items():
        scores, truth = [], []
        for st in studies:
            deciding = [lab for lab in deciding_labels(manifest, policy, st.population) if lab in names and lab in st.scores]
            t = tier_truth(st.truth, truth_labels[tier])
            if deciding and math.isfinite(t):
                scores.append(max(st.scores[lab] for lab in deciding))
                truth.append(t)
        y, sc = np.array(truth), np.array(scores)
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if tier == "normal":
            if n_pos == 0:
                warnings.append("normal: no abnormal study in the labelled set, so no rule-out threshold can be set for "
                                f"sensitivity {target_sensitivity:.0%}; study-level thresholds not fitted")
                return StudyFit(None, (), len(studies), population, tuple(warnings))
            thr = between_cases(sc, threshold_for_sensitivity(y, sc, target_sensitivity))
            target: dict[str, Any] = {"sensitivity": target_sensitivity}
            if n_pos < MIN_POSITIVES:
                warnings.append(f"normal: only {n_pos} abnormal studies; one missed study moves sensitivity by "
                                f"{100 / n_pos:.0f} points, so the {target_sensitivity:.0%} target cannot be checked")
        else:
            if n_neg == 0:
                warnings.append(f"{tier}: no study without a {tier} finding in the labelled set, so the share flagged "
                                f"cannot be bounded; study-level thresholds not fitted")
                return StudyFit(None, (), len(studies), population, tuple(warnings))
            thr = threshold_for_max_share(sc[y == 0], max_false_urgent)
            target = {"max_false_urgent": max_false_urgent}
            if max_false_urgent > 0 and n_neg < 1 / max_false_urgent:
                warnings.append(f"{tier}: only {n_neg} studies without a {tier} finding; at least "
                                f"{math.ceil(1 / max_false_urgent)} are needed to allow even one false {tier} flag at "
                                f"{max_false_urgent:.0%}")
        tiers[tier] = SiteStudyTier(tier, {population: round(float(thr), 6)}, target=target)
    # What the whole decision (critical, then urgent, then normal) gives with these thresholds, per study: a study's
    # scores are already its images' highest, so deciding once on them is deciding its images and taking the highest.
    fitted = dataclasses.replace(site, study=tiers)
    prios = [decide_priority(st.scores, manifest=manifest, policy=policy, site=fitted, population=st.population).priority
             for st in studies]
    pops = sorted({st.population for st in studies})
    achieved: list[TierResult] = []
    for tier in tiers:
        for group in ["all studies", *pops] if len(pops) > 1 else ["all studies"]:
            sel = [k for k, st in enumerate(studies) if group == "all studies" or st.population == group]
            achieved.append(tier_result(tier, group, ((prios[k], tier_truth(studies[k].truth, truth_labels[tier]))
                                                      for k in sel)))
        tiers[tier] = dataclasses.replace(tiers[tier], stats={r.group: r.to_json() for r in achieved if r.tier == tier})
    return StudyFit(tiers, tuple(achieved), len(studies), population, tuple(warnings))


# --------------------------------------------------------------------------------------------- the command


@dataclass(frozen=True, slots=True)
class CalibrationRun:
    """What ``calibrate_results`` fitted and wrote."""

    site: SiteCalibration
    fits: tuple[LabelFit, ...]
    path: Path
    n_used: int  # labelled images whose results row was scored
    unmatched_labels: tuple[tuple[int, str], ...]  # (0-based labels row, why)
    study: StudyFit | None = None  # None: the model's manifest was not found (per-label site file only)


def results_identity(results: ResultsTable, *, where: str | Path) -> tuple[str, str, str]:
    """The one (model_name, model_version, model_sha256) that every scored record names.

    A site file is stamped with all three and refused for any other model, so each must be present and
    unique; the model itself need not be installed to calibrate.
    """

    def one(key: str) -> str:
        vals = results.distinct(key, scored_only=True)
        if len(vals) != 1:
            raise ConfigError(
                f"{where}: scored rows must all name one model in '{key}', found {vals or 'none'}; calibrate on the "
                "results of one model version written by `cxrtriage predict`"
            )
        return vals[0]

    return one("model_name"), one("model_version"), one("model_sha256")


def calibrate_results(
    results: Path,
    labels: Path,
    *,
    out: Path,
    target_sensitivity: float = 0.95,
    method: str = "platt",
    model: str | Path | None = None,
    force: bool = False,
    max_false_urgent: float = DEFAULT_MAX_FALSE_URGENT,
    policy: Path | None = None,
    population: str | None = None,
) -> CalibrationRun:
    """Fit a site calibration on ``results`` (of ``cxrtriage predict`` without a site file) and ``labels``; write ``out``.

    ``model``, when given, must be the model that produced the results (name, version and sha256). Per label: a
    score map and per-label thresholds (``fit_site``). Per study, with the model's manifest (found from the results
    or ``model``): the study-level thresholds of each tier of ``policy`` (default: the packaged one) for
    ``target_sensitivity`` (normal) and ``max_false_urgent`` (urgent, critical), written for ``population`` (default:
    every population), and what the whole decision achieves on the labelled studies (``fit_study``).

    Raises:
        ConfigError: a bad option, ``out`` exists without ``force``, results scored with a site file or by
            several models, results of another model than ``model``, or no label could be calibrated.
        InputError: a file cannot be read, or the labels have no column named like a model label.
        ModelError: ``model`` cannot be found.
        OutputError: ``out`` cannot be written.
    """
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose 'platt' or 'isotonic'")
    if not 0.0 <= max_false_urgent < 1.0:
        raise ConfigError(f"--max-false-urgent must be within [0, 1), got {max_false_urgent}")
    if out.exists() and not force:
        raise ConfigError(f"{out}: already exists; choose another --out or pass --force to overwrite it")
    table_in = read_results(results)
    used_site = table_in.distinct("site_file")
    if used_site:
        raise ConfigError(
            f"{results}: these results were scored with site file {used_site[0]}; calibrate on results of "
            "`cxrtriage predict` run WITHOUT --site, so that the map starts from the model's own scores"
        )
    name, version, sha = results_identity(table_in, where=results)
    seals = table_in.distinct("model_integrity")
    man: ModelManifest | None = None
    if model is not None:
        man = manifest_for_results([name], [sha], model, where=results, integrities=seals)
        if (man.name, man.version) != (name, version):  # same ONNX file, but the site file records name and version too
            raise ConfigError(
                f"{results}: results come from model '{name}' {version} (sha256 {sha[:12]}…), not from --model "
                f"'{man.name}' {man.version} (sha256 {man.sha256[:12]}…)"
            )
    else:
        try:
            man = manifest_for_results([name], [sha], None, where=results, integrities=seals,
                                       recorded=recorded_manifest(results))
        except (ConfigError, ModelError):
            man = None  # per-label calibration needs no model; the study level does (its validated labels, policy)
    pol = load_policy(policy, labels=man.labels if man is not None else None)
    if population is not None and (man is None or (population not in man.populations
                                                   and population != UNKNOWN_POPULATION)):
        raise ConfigError(f"--population {population!r}: not a population of the model "
                          f"({sorted(man.populations) if man is not None else 'model not found: pass --model'})")
    model_labels = list(table_in.labels)
    table = read_labels(labels, model_labels)
    if not table.label_columns:
        raise InputError(f"{labels}: no column is named like a model label {model_labels}")
    records = table_in.records
    match = match_labels(records, table)
    pairs = [(i, j) for i, j in match.pairs if records[i].scored]
    scores: dict[str, list[float]] = {lab: [] for lab in table.label_columns}
    truth: dict[str, list[float]] = {lab: [] for lab in table.label_columns}
    for i, j in pairs:
        s = scores_from_record(records[i], table.label_columns)
        for lab in table.label_columns:
            scores[lab].append(s[lab])
            truth[lab].append(float(table.truth[lab][j]))
    site, fits = fit_site(
        scores, truth, model_name=name, model_version=version, model_sha256=sha, method=method,
        target_sensitivity=target_sensitivity,
        source={"results": str(results), "labels": str(labels), "labels_rows": len(table), "matched_scored": len(pairs),
                "unmatched_labels_rows": len(match.unmatched_labels)},
    )
    if not site.labels:
        raise ConfigError(
            "no label could be calibrated: " + " | ".join(w for f in fits for w in f.warnings) + "; nothing was written"
        )
    study: StudyFit | None = None
    if man is not None:
        studies = _studies(list(records), pairs, table, pol, site, man, population)
        study = fit_study(studies, manifest=man, policy=pol, site=site, target_sensitivity=target_sensitivity,
                          max_false_urgent=max_false_urgent, population=population or ALL_POPULATIONS)
        if study.tiers is not None:
            site = dataclasses.replace(site, study=study.tiers,
                                       source={**site.source, "policy": pol.name, "studies": study.n_studies})
    path = write_site(out, site, comment=f"model {name} {version}; {len(pairs)} labelled, scored images from {labels.name}")
    site = dataclasses.replace(site, path=path.resolve())
    return CalibrationRun(site, tuple(fits), path, len(pairs), tuple(match.unmatched_labels), study)
