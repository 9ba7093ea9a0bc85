"""Fit a site calibration on a labelled local set: score maps (Platt or isotonic) and site thresholds.

The site map takes the MODEL's calibrated score to a site score; ``rule_out`` is then the highest site
threshold reaching the target sensitivity, and ``balanced`` the Youden threshold, both on the site score.
``calibrate_results`` is the whole ``cxrtriage calibrate`` command: read, check, match, fit, write.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cxrtriage.errors import ConfigError, InputError
from cxrtriage.evaluate.data import match_labels, read_labels
from cxrtriage.evaluate.metrics import (
    auroc,
    clean_binary,
    positives_for_precision,
    stats_at,
    threshold_for_sensitivity,
    wilson_interval,
    youden_threshold,
)
from cxrtriage.model.registry import manifest_for_results
from cxrtriage.results import ResultsTable, read_results
from cxrtriage.triage.policy import scores_from_record
from cxrtriage.triage.site import METHODS, LabelSiteCalibration, SiteCalibration, write_site

MIN_POSITIVES = 20
MAX_CI_HALF_WIDTH = 0.10
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
    """Move a threshold that sits exactly on a case's score halfway down to the next lower score.

    The same cases fall on each side on the calibration set, but a score rounded when written (results.csv
    keeps 6 significant digits) can no longer slip below its own threshold.
    """
    below = scores[scores < threshold]
    lower = float(below.max()) if below.size else min(0.0, threshold)
    return float((threshold + lower) / 2.0) if lower < threshold else float(threshold)


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
    rule_out = _between(site_scores, threshold_for_sensitivity(y, site_scores, target_sensitivity))
    balanced = _between(site_scores, youden_threshold(y, site_scores))
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
            f"{label}: the 95% CI on sensitivity at the rule-out threshold is {ci[0]:.2f}-{ci[1]:.2f} (±{half:.2f}, wider "
            f"than ±{MAX_CI_HALF_WIDTH:.2f}) with {n_pos} positives; about {need} positives are needed "
            f"for ±{MAX_CI_HALF_WIDTH:.2f}"
        )
    if balanced < rule_out:
        warnings.append(f"{label}: the balanced threshold ({balanced:.3g}) is below the rule-out threshold ({rule_out:.3g}); "
                        f"the target sensitivity {target_sensitivity:.0%} is lower than Youden's point here")
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


@dataclass(frozen=True, slots=True)
class CalibrationRun:
    """What ``calibrate_results`` fitted and wrote."""

    site: SiteCalibration
    fits: tuple[LabelFit, ...]
    path: Path
    n_used: int  # labelled images whose results row was scored
    unmatched_labels: tuple[tuple[int, str], ...]  # (0-based labels row, why)


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
) -> CalibrationRun:
    """Fit a site calibration on ``results`` (of ``cxrtriage predict`` without a site file) and ``labels``; write ``out``.

    ``model``, when given, must be the model that produced the results (name, version and sha256).

    Raises:
        ConfigError: a bad option, ``out`` exists without ``force``, results scored with a site file or by
            several models, results of another model than ``model``, or no label could be calibrated.
        InputError: a file cannot be read, or the labels have no column named like a model label.
        ModelError: ``model`` cannot be found.
        OutputError: ``out`` cannot be written.
    """
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose 'platt' or 'isotonic'")
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
    if model is not None:
        man = manifest_for_results([name], [sha], model, where=results)
        if (man.name, man.version) != (name, version):  # same ONNX file, but the site file records name and version too
            raise ConfigError(
                f"{results}: results come from model '{name}' {version} (sha256 {sha[:12]}…), not from --model "
                f"'{man.name}' {man.version} (sha256 {man.sha256[:12]}…)"
            )
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
    path = write_site(out, site, comment=f"model {name} {version}; {len(pairs)} labelled, scored images from {labels.name}")
    return CalibrationRun(site, tuple(fits), path, len(pairs), tuple(match.unmatched_labels))
