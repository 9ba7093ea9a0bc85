"""The worklist: studies (not images) ordered by triage priority, then by the deciding score."""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.errors import OutputError
from cxrtriage.triage.policy import SCORE_PREFIX, Priority

WORKLIST_COLUMNS = (
    "rank", "priority", "study_key", "study_instance_uid", "priority_reason", "top_finding", "top_score",
    "n_images", "n_scored", "paths",
)


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


def _float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _priority(row: Mapping[str, Any]) -> Priority:
    raw = str(row.get("priority", "") or "").strip()
    if not raw:
        # An image nobody triaged must still reach a reader.
        return Priority.NOT_ASSESSED
    try:
        return Priority(raw)
    except ValueError:
        valid = [p.value for p in Priority]
        raise ValueError(f"{row.get('path', '?')}: unknown priority '{raw}'; expected one of {valid}") from None


def _deciding(row: Mapping[str, Any]) -> tuple[str, float | None]:
    """The finding and score that decided the row's priority (or, for rows triaged elsewhere, its top score)."""
    if "priority_score" in row:
        return str(row.get("priority_finding", "") or ""), _float(row.get("priority_score"))
    best: tuple[str, float | None] = ("", None)
    for k, v in row.items():
        f = _float(v) if k.startswith(SCORE_PREFIX) else None
        if f is not None and (best[1] is None or f > best[1]):
            best = (k[len(SCORE_PREFIX):], f)
    return best


def build_worklist(rows: Iterable[Mapping[str, Any]]) -> list[WorklistEntry]:
    """Group triaged results rows by ``study_key`` and order the studies.

    A study takes the highest priority of its ASSESSED images (an excluded lateral view does not make a
    study "not assessed" when its frontal was scored); a study with no assessed image is ``not_assessed``.
    Order: critical, urgent, routine, not_assessed, normal; ties by deciding score (descending), then key.
    """
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = str(row.get("study_key", "") or "") or str(row.get("path", ""))
        groups.setdefault(key, []).append(row)
    entries: list[WorklistEntry] = []
    for key, members in groups.items():
        prios = [_priority(r) for r in members]
        assessed = [(p, r) for p, r in zip(prios, members, strict=True) if p is not Priority.NOT_ASSESSED]
        n_scored = sum(1 for r in members if str(r.get("status", "")) == "scored")
        uid = next((str(r["study_instance_uid"]) for r in members if r.get("study_instance_uid")), "")
        paths = tuple(str(r.get("path", "")) for r in members)
        prio: Priority
        if assessed:
            def order(item: tuple[Priority, Mapping[str, Any]]) -> tuple[int, float]:
                score = _deciding(item[1])[1]
                return (item[0].rank, -(score if score is not None else -math.inf))

            prio, best = min(assessed, key=order)
            finding, score = _deciding(best)
            reason = str(best.get("priority_reason", "") or "")
            if len(members) > 1:
                reason += f" [{Path(str(best.get('path', ''))).name}]"
            skipped = len(members) - len(assessed)
            if skipped:
                reason += f"; {skipped} of {len(members)} images not assessed"
        else:
            prio, finding, score = Priority.NOT_ASSESSED, "", None
            reasons = list(dict.fromkeys(str(r.get("priority_reason", "") or r.get("reason", "") or "not assessed")
                                         for r in members))
            reason = "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")
        entries.append(WorklistEntry(key, uid, prio, reason, len(members), n_scored, finding, score, paths))
    entries.sort(key=lambda e: (e.priority.rank, -(e.top_score if e.top_score is not None else -math.inf), e.study_key))
    return entries


def write_worklist(path: str | Path, entries: Iterable[WorklistEntry]) -> Path:
    """Write the worklist CSV (columns ``WORKLIST_COLUMNS``; ``paths`` joined with ';'). Returns the path."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(WORKLIST_COLUMNS)
            for i, e in enumerate(entries, start=1):
                w.writerow([i, e.priority.value, e.study_key, e.study_instance_uid, e.priority_reason, e.top_finding,
                            "" if e.top_score is None else f"{e.top_score:.4f}", e.n_images, e.n_scored, ";".join(e.paths)])
    except OSError as exc:
        raise OutputError(f"{p}: cannot write the worklist ({exc.strerror}); check the output folder and permissions") from exc
    return p
