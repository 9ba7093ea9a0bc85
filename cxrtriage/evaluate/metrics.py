"""Classification metrics in plain NumPy: ROC/AUROC, AUPRC, bootstrap intervals, operating points, ECE.

Used by training (validation, model cards) and by ``cxrtriage evaluate``/``calibrate``; tests check
them against scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


def clean_binary(y_true: ArrayLike, y_score: ArrayLike) -> tuple[NDArray[np.int8], NDArray[np.float64]]:
    """0/1 truth and float scores as flat arrays, rows with a NaN in either dropped; ValueError otherwise."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but y_score has {s.size}")
    keep = np.isfinite(y) & np.isfinite(s)
    y, s = y[keep], s[keep]
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must hold only 0/1 (NaN rows are ignored)")
    return y.astype(np.int8), s


def roc_curve(y_true: ArrayLike, y_score: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """False-positive rate, true-positive rate and thresholds (score >= threshold is positive).

    Thresholds are the distinct scores in decreasing order, preceded by +inf, as in scikit-learn.
    """
    y, s = clean_binary(y_true, y_score)
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    distinct = np.where(np.diff(s))[0]
    idx = np.r_[distinct, y.size - 1]
    tps = np.cumsum(y)[idx].astype(np.float64)
    fps = (idx + 1 - tps).astype(np.float64)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thresholds = np.r_[np.inf, s[idx]]
    p, n = tps[-1], fps[-1]
    tpr = tps / p if p > 0 else np.full_like(tps, np.nan)
    fpr = fps / n if n > 0 else np.full_like(fps, np.nan)
    return fpr, tpr, thresholds


def auroc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve (ties count half); NaN when one class is absent."""
    y, s = clean_binary(y_true, y_score)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    # Mann-Whitney U with average ranks for ties.
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size, dtype=np.float64)
    sorted_s = s[order]
    uniq, start_idx, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = start_idx + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def auprc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision (step-wise area under the precision-recall curve, as scikit-learn)."""
    y, s = clean_binary(y_true, y_score)
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    fpr, tpr, _ = roc_curve(y, s)
    n_neg = y.size - n_pos
    tps = tpr * n_pos
    fps = fpr * n_neg if n_neg > 0 else np.zeros_like(tps)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tps + fps > 0, tps / (tps + fps), 1.0)
    recall = tpr
    return float(np.sum(np.diff(recall) * precision[1:]))


# Why 20: below it a percentile bootstrap of AUROC/AUPRC resamples a handful of cases of one class (with 1 positive,
# every resample holds that one case or none) and its "95 %" interval says far more than the data can; one case then
# moves a rate by 5 points or more. `calibrate` warns below the same count (MIN_POSITIVES there).
MIN_PER_CLASS_FOR_INTERVAL = 20


def interval_withheld(n_pos: int, n_neg: int) -> str:
    """Why no bootstrap interval is given for ``n_pos`` positives and ``n_neg`` negatives ("" when one is), e.g.
    "too few positives (n=1)": fewer than ``MIN_PER_CLASS_FOR_INTERVAL`` of either class."""
    few = [f"too few {what} (n={n})" for what, n in (("positives", n_pos), ("negatives", n_neg))
           if n < MIN_PER_CLASS_FOR_INTERVAL]
    return ", ".join(few)


def bootstrap_ci(
    metric: Callable[[NDArray[np.int8], NDArray[np.float64]], float],
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` (resampling cases with replacement).

    The interval depends on the cases, not on their order: they are put in one canonical order (by score, then
    truth) before the seeded resampling. Why: the same validation cases reach this function in different orders from
    different code paths (training's finalize, `train operating-points`), and a borderline interval (e.g. a lower
    bound near 0.5, which decides whether a label moves the triage) must come out the same from both.
    """
    y, s = clean_binary(y_true, y_score)
    if y.size == 0:
        return (float("nan"), float("nan"))
    order = np.lexsort((y, s))  # the metrics here depend only on the (truth, score) pairs, so equal pairs are alike
    y, s = y[order], s[order]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        v = metric(y[idx], s[idx])
        if np.isfinite(v):
            vals.append(v)
    if len(vals) < max(10, n_boot // 10):
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


@dataclass(frozen=True, slots=True)
class BinaryStats:
    """Confusion-matrix statistics at one threshold (score >= threshold is positive)."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def sensitivity(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else float("nan")

    @property
    def specificity(self) -> float:
        return self.tn / (self.tn + self.fp) if self.tn + self.fp else float("nan")

    @property
    def ppv(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else float("nan")

    @property
    def npv(self) -> float:
        return self.tn / (self.tn + self.fn) if self.tn + self.fn else float("nan")


def stats_at(y_true: ArrayLike, y_score: ArrayLike, threshold: float) -> BinaryStats:
    y, s = clean_binary(y_true, y_score)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    return BinaryStats(threshold=float(threshold), tp=tp, fp=fp, tn=int(np.sum(y == 0)) - fp, fn=int(np.sum(y == 1)) - tp)


def threshold_for_sensitivity(y_true: ArrayLike, y_score: ArrayLike, target: float) -> float:
    """The highest threshold whose sensitivity is >= ``target`` (the most specific rule-out point)."""
    fpr, tpr, thr = roc_curve(y_true, y_score)
    ok = np.where(tpr >= target)[0]
    if ok.size == 0 or not np.isfinite(tpr).all():
        raise ValueError("no positives in the data: cannot set a sensitivity-based threshold")
    return float(thr[ok[0]])


def rule_out_threshold(y_true: ArrayLike, y_score: ArrayLike, target: float, *, balanced: float) -> float:
    """The rule-out operating point: the highest threshold whose sensitivity is >= ``target``, but never above the
    ``balanced`` threshold.

    Why the cap: a policy chooses rule-out over balanced to flag MORE positives. When the balanced (Youden) point
    already reaches the target, the highest threshold that still reaches it lies above the balanced one and flags
    fewer positives (the shipped cxr-classifier 1.0.0 had pneumonia rule-out 0.752 with validation sensitivity 0.952,
    above balanced 0.607 with 0.965). Sensitivity can only fall as the threshold rises, so the lower of the two meets
    the target and is at least as sensitive as balanced.
    """
    return min(threshold_for_sensitivity(y_true, y_score, target), float(balanced))


def between_cases(scores: ArrayLike, threshold: float) -> float:
    """Move a threshold that sits exactly on a case's score halfway down to the next lower score.

    The same cases fall on each side of it, but a score rounded when written (results.csv keeps 6 significant
    digits) can no longer slip below its own threshold.
    """
    s = np.asarray(scores, dtype=np.float64)
    below = s[s < threshold]
    lower = float(below.max()) if below.size else min(0.0, threshold)
    return float((threshold + lower) / 2.0) if lower < threshold else float(threshold)


def threshold_for_max_share(negative_scores: ArrayLike, max_share: float) -> float:
    """The lowest threshold that flags (score >= threshold) at most ``max_share`` of the negatives, halfway between
    the highest negative left unflagged and the lowest one flagged (just above the highest negative when none may be).

    ValueError when there are no negatives.
    """
    raw = np.asarray(negative_scores, dtype=np.float64).ravel()
    s = np.sort(raw[np.isfinite(raw)])[::-1]
    if s.size == 0:
        raise ValueError("no negatives in the data: cannot set a threshold for a share of them")
    k = int(np.floor(max_share * s.size + 1e-9))  # negatives that may be flagged
    if k >= s.size:
        return float(s[-1])
    # Negatives tied with the (k+1)-th highest would be flagged with it: the threshold goes above the whole tie.
    flagged = s[:k][s[:k] > s[k]]
    if flagged.size == 0:
        return float(np.nextafter(s[k], np.inf))
    return float((s[k] + flagged.min()) / 2.0)


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Threshold maximising sensitivity + specificity - 1 (Youden's J)."""
    fpr, tpr, thr = roc_curve(y_true, y_score)
    j = tpr - fpr
    j[0] = -np.inf  # the +inf threshold classifies nothing as positive
    return float(thr[int(np.nanargmax(j))])


@dataclass(frozen=True, slots=True)
class Reliability:
    """Equal-width reliability bins: mean predicted probability, observed frequency and count per bin."""

    bin_edges: NDArray[np.float64]
    mean_predicted: NDArray[np.float64]
    observed: NDArray[np.float64]
    counts: NDArray[np.int64]
    ece: float


def reliability(y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 10) -> Reliability:
    """Reliability diagram data and expected calibration error (count-weighted |observed - predicted|)."""
    y, p = clean_binary(y_true, y_prob)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1], right=False), 0, n_bins - 1)
    counts = np.bincount(which, minlength=n_bins).astype(np.int64)
    sum_p = np.bincount(which, weights=p, minlength=n_bins)
    sum_y = np.bincount(which, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.where(counts > 0, sum_p / counts, np.nan)
        obs = np.where(counts > 0, sum_y / counts, np.nan)
    ece = float(np.nansum(counts * np.abs(obs - mean_p)) / max(y.size, 1))
    return Reliability(bin_edges=edges, mean_predicted=mean_p, observed=obs, counts=counts, ece=ece)


def wilson_interval(successes: int, n: int, *, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion (95 % by default); (NaN, NaN) when ``n`` is 0.

    Used for sensitivity/specificity, where the normal approximation fails near 0 and 1.
    """
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def positives_for_precision(target: float, half_width: float, *, z: float = 1.959963984540054, limit: int = 100_000) -> int:
    """Fewest cases for which the Wilson interval around a proportion ``target`` is at most ±``half_width``."""
    for n in range(1, limit + 1):
        lo, hi = wilson_interval(round(target * n), n, z=z)
        if (hi - lo) / 2 <= half_width:
            return n
    return limit
