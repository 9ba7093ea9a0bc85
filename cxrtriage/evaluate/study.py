"""Study-level truth and tier statistics, shared by ``evaluate``, ``calibrate`` and the training recipe.

A tier's decision is judged per study: ``normal`` against "something is abnormal" (any label positive), ``urgent``
and ``critical`` against "a finding of that tier (or above) is present". One definition here keeps the figures in
the model manifest, a site file and an evaluation comparable.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cxrtriage.evaluate.metrics import wilson_interval
from cxrtriage.results import Priority

TIERS = ("critical", "urgent", "normal")


def hit(priority: Priority, tier: str) -> bool:
    """Did the decision flag the study for ``tier``? ``normal``: anything but normal; ``urgent``: urgent or critical;
    ``critical``: critical."""
    if tier == "normal":
        return priority is not Priority.NORMAL
    if tier == "urgent":
        return priority in (Priority.URGENT, Priority.CRITICAL)
    return priority is Priority.CRITICAL


def tier_truth(truth: Mapping[str, float], tier_labels: Sequence[str]) -> float:
    """1 when a label of the tier is positive; 0 when the tier's known labels are all 0, or the study is normal
    (every known label 0); NaN when nothing is known about the tier."""
    known = [truth[lab] for lab in tier_labels if lab in truth and math.isfinite(truth[lab])]
    if any(v == 1 for v in known):
        return 1.0
    everything = [v for v in truth.values() if math.isfinite(v)]
    if known or (everything and max(everything) == 0):
        return 0.0
    return math.nan


@dataclass(frozen=True, slots=True)
class TierResult:
    """One tier's study-level decision against truth, for a group of studies (95 % Wilson CIs).

    ``normal``: positives are abnormal studies and a hit is a priority other than normal; specificity is the share of
    normal studies called normal. ``urgent`` / ``critical``: positives are studies with a finding of that tier (or
    above), a hit is that tier or higher; specificity is the share of the other studies not flagged so.
    """

    tier: str
    group: str
    n_pos: int
    n_neg: int
    true_pos: int
    true_neg: int

    @property
    def sensitivity(self) -> float:
        return self.true_pos / self.n_pos if self.n_pos else math.nan

    @property
    def specificity(self) -> float:
        return self.true_neg / self.n_neg if self.n_neg else math.nan

    @property
    def sensitivity_ci(self) -> tuple[float, float]:
        return wilson_interval(self.true_pos, self.n_pos)

    @property
    def specificity_ci(self) -> tuple[float, float]:
        return wilson_interval(self.true_neg, self.n_neg)

    def to_json(self, digits: int = 4) -> dict[str, Any]:
        def r(v: float) -> float | None:
            return round(v, digits) if math.isfinite(v) else None

        return {"n_pos": self.n_pos, "n_neg": self.n_neg,
                "sensitivity": r(self.sensitivity), "sensitivity_ci95": [r(v) for v in self.sensitivity_ci],
                "specificity": r(self.specificity), "specificity_ci95": [r(v) for v in self.specificity_ci]}


def tier_result(tier: str, group: str, studies: Iterable[tuple[Priority, float]]) -> TierResult:
    """Count a tier's hits over ``(study priority, tier truth)`` pairs (unknown truth is left out)."""
    n_pos = n_neg = tp = tn = 0
    for priority, truth in studies:
        if truth == 1:
            n_pos += 1
            tp += hit(priority, tier)
        elif truth == 0:
            n_neg += 1
            tn += not hit(priority, tier)
    return TierResult(tier, group, n_pos, n_neg, tp, tn)


def study_priority(priorities: Iterable[Priority]) -> Priority:
    """A study's priority: the highest of its assessed images' (the worklist rule); ``not_assessed`` when none is."""
    assessed = [p for p in priorities if p is not Priority.NOT_ASSESSED]
    return min(assessed, key=lambda p: p.rank) if assessed else Priority.NOT_ASSESSED
