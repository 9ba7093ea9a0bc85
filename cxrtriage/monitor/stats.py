"""Drift statistics in NumPy: population stability index (PSI), Kolmogorov-Smirnov, and their p-values.

**PSI** between a reference distribution r and a current one c over k bins: ``sum((c_i - r_i) * ln(c_i / r_i))``, the
symmetric Kullback-Leibler divergence. Scores are binned at the reference's deciles (10 bins of 10 % each, fewer when
deciles coincide); categories (priorities, quality failures, excluded reasons) are their own bins. Empty bins get half
an observation (the usual additive smoothing), so a category that appears only now gives a large but finite PSI.
The customary reading: < 0.10 stable, 0.10-0.25 a moderate shift, >= 0.25 a major shift.

PSI grows with noise in small samples: with no shift at all, ``PSI * n_eff`` follows approximately a chi-square with
k - 1 degrees of freedom (``n_eff = n m / (n + m)``; the PSI is a divergence whose second-order term is Pearson's
chi-square). ``psi_pvalue`` gives that p-value, so that an alert needs a shift both large (the PSI level) and unlikely
to be noise (the p-value), whatever the slice's size.

**KS** ``D``: the largest distance between the two cumulative distributions; ``ks_pvalue`` is the asymptotic two-sample
p-value (Kolmogorov's distribution at ``(sqrt(n_eff) + 0.12 + 0.11 / sqrt(n_eff)) D``, Stephens' correction).
A reference given by its quantiles (the model manifest) is treated as a sample of its recorded size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]


def proportions(counts: FloatArray, *, smooth: float = 0.5) -> FloatArray:
    """Counts to proportions, with ``smooth`` added to each bin so that none is empty."""
    c = counts + smooth
    return np.asarray(c / c.sum(), np.float64)


def psi(reference: FloatArray, current: FloatArray) -> float:
    """Population stability index of two proportion vectors (same bins, no zero)."""
    return float(np.sum((current - reference) * np.log(current / reference)))


def effective_n(n: float, m: float) -> float:
    """``n m / (n + m)``: the sample size of a two-sample comparison (n when the reference is exact, m = inf)."""
    if not math.isfinite(m):
        return float(n)
    return n * m / (n + m) if n + m > 0 else 0.0


def chi2_sf(x: float, df: int) -> float:
    """Survival function of the chi-square distribution (regularised upper incomplete gamma Q(df/2, x/2))."""
    if df <= 0:
        return 1.0
    if x <= 0:
        return 1.0
    a, z = df / 2.0, x / 2.0
    if z < a + 1.0:  # series for P, then Q = 1 - P (Numerical Recipes 6.2)
        term = total = 1.0 / a
        ap = a
        for _ in range(1000):
            ap += 1.0
            term *= z / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        p = total * math.exp(-z + a * math.log(z) - math.lgamma(a))
        return max(0.0, 1.0 - p)
    # continued fraction for Q (Lentz)
    tiny = 1e-300
    b = z + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return min(1.0, math.exp(-z + a * math.log(z) - math.lgamma(a)) * h)


def psi_pvalue(value: float, bins: int, n_eff: float) -> float:
    """P-value of a PSI this large with no shift: ``PSI * n_eff`` ~ chi-square(bins - 1) (see the module docstring)."""
    return chi2_sf(value * n_eff, bins - 1)


def ks_pvalue(d: float, n_eff: float) -> float:
    """Asymptotic two-sample Kolmogorov-Smirnov p-value of ``d`` (Stephens' small-sample correction)."""
    if n_eff <= 0 or d <= 0:
        return 1.0
    s = math.sqrt(n_eff)
    lam = (s + 0.12 + 0.11 / s) * d
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam) for k in range(1, 101))
    return float(min(1.0, max(0.0, 2.0 * total)))


@dataclass(frozen=True, slots=True)
class ScoreDistribution:
    """A label's reference scores: a sample (its CDF is a step function) or, from the model manifest, equally spaced
    quantiles q_0..q_K of a sample of ``n`` (its CDF is piecewise linear between them)."""

    n: int
    sample: FloatArray | None = None
    quantiles: FloatArray | None = None

    def __post_init__(self) -> None:
        if (self.sample is None) == (self.quantiles is None):
            raise ValueError("give a sample or quantiles")

    @classmethod
    def of_sample(cls, values: Sequence[float] | FloatArray) -> ScoreDistribution:
        return cls(n=len(values), sample=np.sort(np.asarray(values, np.float64)))

    @classmethod
    def of_quantiles(cls, quantiles: Sequence[float], n: int) -> ScoreDistribution:
        q = np.maximum.accumulate(np.asarray(quantiles, np.float64))  # monotone, whatever rounding did
        return cls(n=n, quantiles=q)

    def cdf(self, x: FloatArray) -> FloatArray:
        """P(score <= x)."""
        if self.sample is not None:
            return np.asarray(np.searchsorted(self.sample, x, side="right") / max(len(self.sample), 1), np.float64)
        assert self.quantiles is not None
        q = self.quantiles
        p = np.linspace(0.0, 1.0, len(q))
        # runs of equal quantiles (many identical scores): the CDF jumps there, to the run's last probability
        xs, last = np.unique(q[::-1], return_index=True)
        ps = p[::-1][last]
        return np.asarray(np.interp(x, xs, ps, left=0.0, right=1.0), np.float64)

    def edges(self, bins: int = 10) -> FloatArray:
        """Inner bin edges at the reference's deciles (``bins``-quantiles), duplicates merged."""
        p = np.linspace(0.0, 1.0, bins + 1)[1:-1]
        if self.sample is not None:
            e = np.quantile(self.sample, p) if len(self.sample) else np.array([])
        else:
            assert self.quantiles is not None
            e = np.interp(p, np.linspace(0.0, 1.0, len(self.quantiles)), self.quantiles)
        return np.unique(np.asarray(e, np.float64))

    def counts(self, edges: FloatArray) -> FloatArray:
        """Reference counts per bin (-inf, e0], (e0, e1], ..., (e_last, inf) (expected counts for quantiles)."""
        if self.sample is not None:
            return binned(self.sample, edges)
        cum = np.concatenate([[0.0], self.cdf(edges), [1.0]])
        return np.asarray(np.diff(cum) * self.n, np.float64)


def binned(values: FloatArray, edges: FloatArray) -> FloatArray:
    """Counts of ``values`` in the bins (-inf, e0], (e0, e1], ..., (e_last, inf)."""
    idx = np.searchsorted(edges, values, side="left")
    return np.bincount(idx, minlength=len(edges) + 1).astype(np.float64)


def ks_statistic(current: FloatArray, reference: ScoreDistribution) -> float:
    """Largest distance between the current sample's empirical CDF and the reference CDF.

    Checked just before and at every current value and at every reference point, where the largest gap between a
    step function and a step or piecewise-linear one lies.
    """
    cur = np.sort(np.asarray(current, np.float64))
    n = len(cur)
    if n == 0:
        return 0.0
    ref_points = reference.sample if reference.sample is not None else reference.quantiles
    assert ref_points is not None
    points = np.unique(np.concatenate([cur, ref_points]))
    at = np.searchsorted(cur, points, side="right") / n
    before = np.searchsorted(cur, points, side="left") / n
    ref_at = reference.cdf(points)
    ref_before = reference.cdf(np.nextafter(points, -np.inf))
    return float(max(np.max(np.abs(at - ref_at)), np.max(np.abs(before - ref_before))))


def score_drift(current: FloatArray, reference: ScoreDistribution, bins: int = 10) -> tuple[float, int, float, float]:
    """(PSI over the reference's deciles, number of bins, KS D, KS p-value) of ``current`` scores."""
    edges = reference.edges(bins)
    value = psi(proportions(reference.counts(edges)), proportions(binned(current, edges)))
    d = ks_statistic(current, reference)
    return value, len(edges) + 1, d, ks_pvalue(d, effective_n(len(current), reference.n))


def categorical_psi(reference: Mapping[str, float], current: Mapping[str, float]) -> tuple[float, int, list[str]]:
    """PSI of two count mappings over the union of their categories; returns (psi, bins, categories)."""
    cats = sorted(set(reference) | set(current))
    r = proportions(np.array([float(reference.get(c, 0)) for c in cats]))
    c = proportions(np.array([float(current.get(c, 0)) for c in cats]))
    return psi(r, c), len(cats), cats


def bh_adjust(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (q-values): declaring every q <= a keeps the expected share of false
    alarms among the alarms at a or below, and, when nothing at all shifted, the chance of any alarm at a or below."""
    m = len(p_values)
    if m == 0:
        return []
    order = np.argsort(p_values)
    ranked = np.asarray(p_values, np.float64)[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return [float(v) for v in out]
