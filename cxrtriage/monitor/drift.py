"""Drift of each slice of the results (all, per period, per subgroup) against a reference, with alert levels.

**Alert levels** (per metric of a slice; see ``cxrtriage.monitor.stats`` for the statistics):

- ``alert``: PSI >= 0.25 (a major shift by the customary reading) and q <= 0.01;
- ``warn``: PSI >= 0.10 (a moderate shift) and q <= 0.05;
- ``ok`` otherwise; ``too few`` when the slice or the reference has fewer than ``MIN_N`` (30) values for the metric
  (never judged: a PSI of 0.3 is common noise at n = 30); ``no reference`` when the reference does not know the
  metric (the model's validation split has no priorities, quality checks or exclusions).

p is the Kolmogorov-Smirnov p-value for scores and the chi-square p-value of the PSI for categories; q is p adjusted
by Benjamini-Hochberg over every judged metric of every slice of the run. Both conditions are needed: the PSI says
that the shift is large enough to matter, q that it is unlikely to be sampling noise (a slice of 40 images reaches
PSI 0.25 by chance; a slice of 40,000 reaches any p for a trivial shift). The adjustment is needed because a run makes
100 to 300 tests (slices x 11 labels and the category metrics): with a plain p < 0.001, 8 % of the no-shift runs of
``scripts/monitor_null_rate.py`` (200 random halves of 160 NIH films with months, sexes, views and ages) alerted
somewhere; with q, when nothing shifted, the chance of any alert in a run is at most 1 % (any warning at most 5 %), and
measured 1.0 % (warnings 3.0 %) on those splits, 0 % (warnings 5.5 % and 1.5 %) on halves of all 486 NIH PNGs and of
the 624 Kermany test JPEGs. docs/monitor.md has these figures and the real shifts the levels catch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from cxrtriage.monitor.profile import COMPOSITION, ROW_METRICS, SCORED_METRICS, UNSCORED_METRICS, Profile, attribute, profile_of
from cxrtriage.monitor.stats import bh_adjust, categorical_psi, effective_n, psi_pvalue, score_drift
from cxrtriage.results import ImageRecord

PSI_WARN, PSI_ALERT = 0.10, 0.25
Q_WARN, Q_ALERT = 0.05, 0.01  # Benjamini-Hochberg adjusted p-values (false discovery rate) over the run
JUDGED = "judged"  # a metric's level before the run's p-values are adjusted
MIN_N = 30
LEVELS = ("alert", "warn", "ok", "too few", "no reference")  # most severe first
SUBGROUPS = ("manufacturer", "device_model", "institution", "view", "age_band", "sex", "input_kind", "population")
PERIODS: dict[str, Callable[[str], str]] = {
    "month": lambda m: m,
    "quarter": lambda m: f"{m[:4]}-Q{(int(m[5:7]) - 1) // 3 + 1}",
    "year": lambda m: m[:4],
}


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric of one slice against the reference.

    ``name``: ``score:<label>``, or a category metric (``priority``, ``quality``, ``status``, ``excluded``, ``age_band``
    ...). ``current``/``reference``: for scores their median and 90th percentile, for categories their proportions.
    """

    name: str
    n: int
    n_reference: int
    level: str
    psi: float | None = None
    bins: int = 0
    ks: float | None = None
    p_value: float | None = None
    q_value: float | None = None  # p adjusted over the run's judged metrics (Benjamini-Hochberg)
    current: Mapping[str, float] | None = None
    reference: Mapping[str, float] | None = None

    @property
    def is_score(self) -> bool:
        return self.name.startswith("score:")

    def to_dict(self) -> dict[str, Any]:
        def num(v: float | None) -> float | None:
            return None if v is None or not math.isfinite(v) else round(v, 6)

        return {"metric": self.name, "n": self.n, "n_reference": self.n_reference, "level": self.level,
                "psi": num(self.psi), "bins": self.bins, "ks": num(self.ks), "p_value": num(self.p_value),
                "q_value": num(self.q_value),
                "current": {k: num(v) for k, v in (self.current or {}).items()},
                "reference": {k: num(v) for k, v in (self.reference or {}).items()}}


@dataclass(frozen=True, slots=True)
class SliceDrift:
    """A slice of the current results (``dimension`` = ``all``, a period or a subgroup attribute; ``value``)."""

    dimension: str
    value: str
    rows: int
    scored: int
    metrics: tuple[Metric, ...]
    against: str = "the whole reference"  # or "the same subgroup of the reference (n images)"

    @property
    def level(self) -> str:
        """The most severe level among the metrics that were judged (``ok`` when none shifted)."""
        judged = [m.level for m in self.metrics if m.level in ("alert", "warn", "ok")]
        return min(judged, key=LEVELS.index) if judged else "too few"

    @property
    def label(self) -> str:
        return "all" if self.dimension == "all" else f"{self.dimension}={self.value}"

    def metric(self, name: str) -> Metric | None:
        return next((m for m in self.metrics if m.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"slice": self.label, "dimension": self.dimension, "value": self.value, "rows": self.rows,
                "scored": self.scored, "level": self.level, "against": self.against,
                "metrics": [m.to_dict() for m in self.metrics]}


def level_of(psi_value: float, q_value: float) -> str:
    """The level of a PSI and its adjusted p-value (module docstring)."""
    if psi_value >= PSI_ALERT and q_value <= Q_ALERT:
        return "alert"
    if psi_value >= PSI_WARN and q_value <= Q_WARN:
        return "warn"
    return "ok"


def judge(drifts: Sequence[SliceDrift]) -> tuple[SliceDrift, ...]:
    """Give every judged metric of ``drifts`` its level, adjusting the p-values over all of them together."""
    judged = [(i, j) for i, d in enumerate(drifts) for j, m in enumerate(d.metrics) if m.level == JUDGED]
    q = bh_adjust([drifts[i].metrics[j].p_value or 1.0 for i, j in judged])
    metrics = [list(d.metrics) for d in drifts]
    for (i, j), qv in zip(judged, q, strict=True):
        m = metrics[i][j]
        metrics[i][j] = replace(m, q_value=qv, level=level_of(m.psi or 0.0, qv))
    return tuple(replace(d, metrics=tuple(ms)) for d, ms in zip(drifts, metrics, strict=True))


def _shares(counts: Mapping[str, float]) -> dict[str, float]:
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def score_metric(label: str, current: Profile, reference: Profile, min_n: int = MIN_N) -> Metric:
    cur, ref = current.scores.get(label), reference.scores.get(label)
    name = f"score:{label}"
    if ref is None or ref.n == 0:
        return Metric(name, cur.n if cur else 0, 0, "no reference")
    n = cur.n if cur is not None else 0
    if cur is None or n < min_n or ref.n < min_n:
        return Metric(name, n, ref.n, "too few")
    assert cur.sample is not None
    value, bins, d, p = score_drift(cur.sample, ref)
    summary = {"median": float(np.median(cur.sample)), "p90": float(np.quantile(cur.sample, 0.9))}
    ref_q = ref.sample if ref.sample is not None else None
    if ref_q is not None:
        ref_summary = {"median": float(np.median(ref_q)), "p90": float(np.quantile(ref_q, 0.9))}
    else:
        assert ref.quantiles is not None
        grid = np.linspace(0.0, 1.0, len(ref.quantiles))
        ref_summary = {"median": float(np.interp(0.5, grid, ref.quantiles)),
                       "p90": float(np.interp(0.9, grid, ref.quantiles))}
    return Metric(name, n, ref.n, JUDGED, psi=value, bins=bins, ks=d, p_value=p, current=summary,
                  reference=ref_summary)


def category_metric(metric: str, current: Profile, reference: Profile, min_n: int = MIN_N) -> Metric:
    cur, ref = current.categories(metric) or {}, reference.categories(metric)
    n = int(sum(cur.values()))
    if ref is None:
        return Metric(metric, n, 0, "no reference", current=_shares(cur))
    n_ref = int(sum(ref.values()))
    if n < min_n or n_ref < min_n:
        return Metric(metric, n, n_ref, "too few", current=_shares(cur), reference=_shares(ref))
    value, bins, _ = categorical_psi(ref, cur)
    p = psi_pvalue(value, bins, effective_n(n, n_ref)) if bins > 1 else 1.0
    return Metric(metric, n, n_ref, JUDGED, psi=value, bins=bins, p_value=p, current=_shares(cur),
                  reference=_shares(ref))


@dataclass(frozen=True, slots=True)
class Reference:
    """What slices are compared with: the whole reference, and (results references) its rows, so that a subgroup is
    compared with the same subgroup of the reference: men now with men then, not with everyone then. A subgroup
    slice compared with the whole reference would flag what the subgroup *is* instead of what changed (men's and
    women's scores differ on the shipped model: with a plain p < 0.001, 27 % of 200 no-shift splits of 160 NIH films
    alerted, mostly in the sex slices, against 8 % like for like; docs/monitor.md)."""

    whole: Profile
    records: tuple[ImageRecord, ...] | None = None  # None: a model reference (no rows, no subgroups)
    # a model reference's validation split per triage population ("adult", "pediatric"): the population slices are
    # compared with their own, since children's and adults' scores differ by design
    populations: Mapping[str, Profile] = field(default_factory=dict)

    def for_slice(self, dimension: str, value: str, labels: Sequence[str], min_n: int) -> tuple[Profile, str]:
        """The profile a slice is compared with, and how to say it: the reference's own rows of the same subgroup
        when it has at least ``min_n`` scored ones, a model reference's validation split of the same population,
        else the whole reference (a period, a new subgroup, another subgroup of a model reference)."""
        if dimension == "population" and value in self.populations:
            prof = self.populations[value]
            return prof, f"the model's validation split of the {value} population ({prof.scored} images)"
        if dimension in SUBGROUPS and self.records is not None:
            same = [r for r in self.records if attribute(r, dimension) == value]
            prof = profile_of(same, labels, name=f"reference {dimension}={value}", kind=self.whole.kind)
            if prof.scored >= min_n:
                return prof, f"the same subgroup of the reference ({prof.scored} scored images)"
            if prof.scored:
                return self.whole, (f"the whole reference (the reference has only {prof.scored} scored image(s) of "
                                    "this subgroup)")
            return self.whole, "the whole reference (a subgroup the reference does not have)"
        return self.whole, "the whole reference"


def slice_drift(dimension: str, value: str, records: Sequence[ImageRecord], labels: Sequence[str],
                reference: Profile | Reference, *, composition: bool, min_n: int = MIN_N,
                judged: bool = True) -> SliceDrift:
    """Every metric of one slice: the scores of each label, the category metrics and (``composition``) who the
    scored images are (age band, sex, view, device...), where the reference knows it. ``judged``: give the levels,
    adjusting the p-values over this slice alone (``drift_of`` adjusts them over the whole run instead)."""
    ref = reference if isinstance(reference, Reference) else Reference(reference)
    against, how = ref.for_slice(dimension, value, labels, min_n)
    prof = profile_of(records, labels, name=f"{dimension}={value}")
    metrics = [score_metric(lab, prof, against, min_n) for lab in labels]
    metrics += [category_metric(m, prof, against, min_n) for m in (*SCORED_METRICS, *ROW_METRICS, *UNSCORED_METRICS)]
    if composition:
        for attr in COMPOSITION:
            if prof.total(attr) or against.total(attr):
                metrics.append(category_metric(attr, prof, against, min_n))
    drift = SliceDrift(dimension, value, len(records), prof.scored, tuple(metrics), how)
    return judge([drift])[0] if judged else drift


def drift_of(records: Sequence[ImageRecord], labels: Sequence[str], reference: Reference, *, period: str = "month",
             subgroups: Sequence[str] = SUBGROUPS, min_n: int = MIN_N) -> tuple[SliceDrift, ...]:
    """Every slice of ``records`` (``slices``) against ``reference``, judged together (module docstring)."""
    return judge([slice_drift(d, v, rows, labels, reference, composition=comp, min_n=min_n, judged=False)
                  for d, v, rows, comp in slices(records, period=period, subgroups=subgroups)])


def slices(records: Sequence[ImageRecord], *, period: str = "month",
           subgroups: Sequence[str] = SUBGROUPS) -> list[tuple[str, str, list[ImageRecord], bool]]:
    """(dimension, value, records, with composition) of every slice: all, each period of the study date (``unknown``
    for rows without one, listed only when some rows have one), each known value of each subgroup attribute (an
    attribute whose only value covers every row adds nothing to ``all`` and is left out)."""
    out: list[tuple[str, str, list[ImageRecord], bool]] = [("all", "all", list(records), True)]
    to_period = PERIODS[period]
    by_period: dict[str, list[ImageRecord]] = {}
    for r in records:
        month = attribute(r, "study_month")
        by_period.setdefault(to_period(month) if month else "unknown", []).append(r)
    if set(by_period) != {"unknown"}:
        out += [(period, key, rows, True) for key, rows in sorted(by_period.items())]
    for attr in subgroups:
        groups: dict[str, list[ImageRecord]] = {}
        for r in records:
            v = attribute(r, attr)
            if v:
                groups.setdefault(v, []).append(r)
        if len(groups) == 1 and len(next(iter(groups.values()))) == len(records):
            continue
        out += [(attr, key, rows, False) for key, rows in sorted(groups.items())]
    return out
