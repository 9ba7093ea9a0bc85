"""Input side of cxrtriage: find files, recognise them by content, select frontal chest radiographs, read pixels."""

from __future__ import annotations

from cxrtriage.io.discover import Probe, discover, group_by_series, group_by_study, probe, series_key, study_key
from cxrtriage.io.limits import MAX_IMAGE_MEMORY, MAX_SIDE
from cxrtriage.io.read import Assessment, assess, read_image
from cxrtriage.io.selection import DEFAULT_RULES, Selection, SelectionRules, load_rules, normalise, select

__all__ = [
    "DEFAULT_RULES",
    "MAX_IMAGE_MEMORY",
    "MAX_SIDE",
    "Assessment",
    "Probe",
    "Selection",
    "SelectionRules",
    "assess",
    "discover",
    "group_by_series",
    "group_by_study",
    "load_rules",
    "normalise",
    "probe",
    "read_image",
    "select",
    "series_key",
    "study_key",
]
