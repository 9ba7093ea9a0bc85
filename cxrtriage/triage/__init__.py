"""Triage: the policy that turns scores into a priority, site calibration files, and the study worklist."""

from __future__ import annotations

from cxrtriage.triage.policy import (
    LevelRule,
    Priority,
    ThresholdKind,
    TriageDecision,
    TriagePolicy,
    check_policy,
    decide_priority,
    default_policy_text,
    load_policy,
    normalize_label,
    scores_from_record,
    triage_record,
)
from cxrtriage.triage.site import (
    LabelSiteCalibration,
    SiteCalibration,
    apply_site,
    check_site,
    dump_site,
    load_site,
    write_site,
)
from cxrtriage.triage.worklist import WORKLIST_COLUMNS, WorklistEntry, build_worklist, write_worklist

__all__ = [
    "WORKLIST_COLUMNS",
    "LabelSiteCalibration",
    "LevelRule",
    "Priority",
    "SiteCalibration",
    "ThresholdKind",
    "TriageDecision",
    "TriagePolicy",
    "WorklistEntry",
    "apply_site",
    "build_worklist",
    "check_policy",
    "check_site",
    "decide_priority",
    "default_policy_text",
    "dump_site",
    "load_policy",
    "load_site",
    "normalize_label",
    "scores_from_record",
    "triage_record",
    "write_site",
    "write_worklist",
]
