"""The worklist: studies (not images) ordered by triage priority, then by the deciding score."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cxrtriage.files import atomic_output
from cxrtriage.results import ImageRecord, Priority, SafeCsvWriter

WORKLIST_COLUMNS = (
    "rank", "priority", "study_key", "study_instance_uid", "priority_reason", "top_finding", "top_score",
    "n_images", "n_scored", "paths",
)
# The column that says when a row's text had to be escaped (a path that is not valid UTF-8).
WORKLIST_NOTE_COLUMN = "priority_reason"


@dataclass(frozen=True, slots=True)
class WorklistEntry:
    """One study on the worklist; ``priority`` is the highest priority among its assessed images."""

    study_key: str
    study_instance_uid: str
    priority: Priority
    priority_reason: str
    n_images: int
    n_scored: int
    top_finding: str
    top_score: float | None
    paths: tuple[str, ...]


def _deciding(record: ImageRecord) -> tuple[str, float | None]:
    """The finding and score that decided the record's priority (or, for a record triaged elsewhere, its top score)."""
    if record.priority_score is not None or record.priority_finding:
        return record.priority_finding or "", record.priority_score
    best: tuple[str, float | None] = ("", None)
    for lab, v in record.scores.items():
        if v is not None and math.isfinite(v) and (best[1] is None or v > best[1]):
            best = (lab, v)
    return best


def build_worklist(records: Iterable[ImageRecord]) -> list[WorklistEntry]:
    """Group triaged records by study and order the studies.

    A study takes the highest priority of its ASSESSED images (an excluded lateral view does not make a
    study "not assessed" when its frontal was scored); a study with no assessed image is ``not_assessed``.
    Order: critical, urgent, routine, not_assessed, normal; ties by deciding score (descending), then key.
    A file that is no image at all (``ImageRecord.in_study``: a README, a DICOM SR) is on no study's list.
    """
    groups: dict[str, list[ImageRecord]] = {}
    for record in records:
        if record.in_study:
            groups.setdefault(record.study, []).append(record)
    entries: list[WorklistEntry] = []
    for key, members in groups.items():
        # An image nobody triaged must still reach a reader.
        prios = [r.priority or Priority.NOT_ASSESSED for r in members]
        assessed = [(p, r) for p, r in zip(prios, members, strict=True) if p is not Priority.NOT_ASSESSED]
        n_scored = sum(1 for r in members if r.scored)
        uid = next((r.study_instance_uid for r in members if r.study_instance_uid), "")
        paths = tuple(r.path for r in members)
        prio: Priority
        if assessed:
            def order(item: tuple[Priority, ImageRecord]) -> tuple[int, float]:
                score = _deciding(item[1])[1]
                return (item[0].rank, -(score if score is not None else -math.inf))

            prio, best = min(assessed, key=order)
            finding, score = _deciding(best)
            reason = best.priority_reason or ""
            if len(members) > 1:
                reason += f" [{Path(best.path).name}]"
            skipped = len(members) - len(assessed)
            if skipped:
                reason += f"; {skipped} of {len(members)} images not assessed"
        else:
            prio, finding, score = Priority.NOT_ASSESSED, "", None
            reasons = list(dict.fromkeys(r.priority_reason or r.reason or "not assessed" for r in members))
            reason = "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")
        entries.append(WorklistEntry(key, uid, prio, reason, len(members), n_scored, finding, score, paths))
    entries.sort(key=lambda e: (e.priority.rank, -(e.top_score if e.top_score is not None else -math.inf), e.study_key))
    return entries


def write_worklist(path: str | Path, entries: Iterable[WorklistEntry]) -> Path:
    """Write the worklist CSV atomically (columns ``WORKLIST_COLUMNS``; ``paths`` joined with ';').

    Cells are made safe as in results.csv (``SafeCsvWriter``): no formula runs in a spreadsheet, and a row whose
    text is not valid UTF-8 is escaped and says so in its ``priority_reason``.
    """
    with atomic_output(path) as f:
        w = SafeCsvWriter(f, WORKLIST_COLUMNS, note_column=WORKLIST_NOTE_COLUMN)
        for i, e in enumerate(entries, start=1):
            cells = [str(i), e.priority.value, e.study_key, e.study_instance_uid, e.priority_reason, e.top_finding,
                     "" if e.top_score is None else f"{e.top_score:.4f}", str(e.n_images), str(e.n_scored),
                     ";".join(e.paths)]
            w.writerow(dict(zip(WORKLIST_COLUMNS, cells, strict=True)))
    return Path(path)
