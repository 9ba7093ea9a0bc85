"""Calibration (Platt), operating points and honest test metrics, built on cxrtriage.evaluate.metrics."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrtriage.evaluate.metrics import auroc, bootstrap_ci, reliability, rule_out_threshold, stats_at, youden_threshold


def sigmoid(z: np.ndarray) -> np.ndarray:
    p: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))  # NumPy types the operator result as Any
    return p


def fit_platt(logits: np.ndarray, y: np.ndarray, *, l2: float = 1e-3, iters: int = 100) -> tuple[float, float]:
    """Fit p = sigmoid(a*logit + b) by Newton's method on the log-loss (tiny L2 on a-1 keeps it finite)."""
    z, t = np.asarray(logits, np.float64), np.asarray(y, np.float64)
    if z.size == 0 or t.min() == t.max():
        return 1.0, 0.0
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = sigmoid(a * z + b)
        w = p * (1 - p)
        ga = np.sum((p - t) * z) + l2 * (a - 1)
        gb = np.sum(p - t)
        h = np.array([[np.sum(w * z * z) + l2, np.sum(w * z)], [np.sum(w * z), np.sum(w) + 1e-9]])
        step = np.linalg.solve(h, np.array([ga, gb]))
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, weights: np.ndarray | None = None, l2: float = 1.0,
                 iters: int = 100) -> np.ndarray:
    """Weighted logistic regression by Newton's method with an L2 penalty on the slopes (not the intercept).

    Returns [slope_1, ..., slope_k, intercept]: p = sigmoid(x @ slopes + intercept).
    """
    x1 = np.c_[np.asarray(x, np.float64), np.ones(len(x))]
    t = np.asarray(y, np.float64)
    w = np.ones(len(t)) if weights is None else np.asarray(weights, np.float64)
    pen = l2 * np.r_[np.ones(x1.shape[1] - 1), 0.0]
    beta = np.zeros(x1.shape[1])
    for _ in range(iters):
        p = sigmoid(x1 @ beta)
        grad = x1.T @ (w * (p - t)) + pen * beta
        hess = (x1 * (w * p * (1 - p))[:, None]).T @ x1 + np.diag(pen) + 1e-9 * np.eye(x1.shape[1])
        step = np.linalg.solve(hess, grad)
        beta = beta - step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def _r(v: float, nd: int = 4) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), nd)


def operating_points(y: np.ndarray, p: np.ndarray) -> dict[str, dict[str, float | None]]:
    """rule_out (highest threshold with sensitivity >= 0.95, never above balanced: ``metrics.rule_out_threshold``)
    and balanced (Youden), with what they gave."""
    out: dict[str, dict[str, float | None]] = {}
    balanced = youden_threshold(y, p)
    for name, thr in (("rule_out", rule_out_threshold(y, p, 0.95, balanced=balanced)), ("balanced", balanced)):
        s = stats_at(y, p, thr)
        out[name] = {"threshold": _r(thr, 6), "sensitivity": _r(s.sensitivity), "specificity": _r(s.specificity)}
    return out


def label_metrics(y: np.ndarray, p: np.ndarray, thresholds: dict[str, Any] | None, *, n_boot: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """AUROC with 95% bootstrap CI, counts, ECE and sensitivity/specificity at the manifest thresholds."""
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    res: dict[str, Any] = {"n_pos": n_pos, "n_neg": n_neg}
    if n_pos and n_neg:
        res["auroc"] = _r(auroc(y, p))
        res["ci95"] = [_r(v) for v in bootstrap_ci(auroc, y, p, n_boot=n_boot, seed=seed)]
    else:
        res["auroc"], res["ci95"] = None, None
    res["ece"] = _r(reliability(y, p).ece)
    for name, op in (thresholds or {}).items():
        s = stats_at(y, p, float(op["threshold"]))
        res[name] = {"sensitivity": _r(s.sensitivity), "specificity": _r(s.specificity)}
    return res


def dice(pred: np.ndarray, truth: np.ndarray, label: int) -> float:
    a, b = pred == label, truth == label
    denom = a.sum() + b.sum()
    return float(2.0 * np.logical_and(a, b).sum() / denom) if denom else 1.0


def dice_summary(values: Sequence[float]) -> dict[str, float | None]:
    v = np.asarray(values, np.float64)
    return {"mean": _r(v.mean()), "p5": _r(np.percentile(v, 5)), "min": _r(v.min()), "n": int(v.size)}
