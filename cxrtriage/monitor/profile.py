"""A set of results rows reduced to what drift is measured on: score distributions and category counts.

The same ``Profile`` describes the reference (the model's validation split, or earlier results) and every slice of
the current results, so that each comparison is one profile against another.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cxrtriage.monitor.stats import ScoreDistribution
from cxrtriage.results import ImageRecord, Status

# Category metrics: over all rows, over the rows that were not scored, over the scored rows.
ROW_METRICS = ("status",)
UNSCORED_METRICS = ("excluded",)
SCORED_METRICS = ("priority", "quality")
# Who the scored images are: compared where the reference knows them too (DICOM facts; the manifest has the first 3).
COMPOSITION = ("age_band", "sex", "view", "manufacturer", "device_model", "institution", "input_kind")
UNKNOWN = ""


@dataclass(frozen=True, slots=True)
class Profile:
    """Rows reduced for comparison: ``scores`` per label (scored rows, the model's own calibrated scores), category
    counts over the scored rows (``priority``, ``quality`` and the composition: ``age_band``...) and over the rows
    (``status``; ``excluded``: the reasons of the rows not scored, by kind)."""

    name: str
    kind: str  # "model" (a manifest's validation split), "results", or "slice" (of the current results)
    rows: int
    scored: int
    scores: Mapping[str, ScoreDistribution]
    scored_categories: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    row_categories: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    model_sha256: str = ""

    def categories(self, metric: str) -> Mapping[str, float] | None:
        """Counts of ``metric``'s categories, or None when this profile does not know them."""
        return self.row_categories.get(metric, self.scored_categories.get(metric))

    def total(self, metric: str) -> int:
        """How many rows ``metric`` counts here."""
        counts = self.categories(metric)
        return int(sum(counts.values())) if counts else 0


_PATHLIKE = re.compile(r"^\S*[/\\]\S*: ")


def reason_kind(reason: str | None, path: str = "") -> str:
    """The kind of an exclusion or failure reason: its first clause, without the file's path or the values in
    brackets ("Modality 'MR' not accepted (accepted: CR, DX)" -> "Modality 'MR' not accepted")."""
    text = (reason or "").strip()
    if path and text.startswith(f"{path}: "):
        text = text[len(path) + 2:]
    text = _PATHLIKE.sub("", text, count=1)
    for sep in (" (", ": ", "; "):
        text = text.split(sep, 1)[0]
    return text.strip()[:80] or "no reason recorded"


def quality_kind(quality: str | None) -> str:
    """``ok``, or the kind of the first failed quality check ("image too small: short side ..." -> "image too small")."""
    if not quality or quality == "ok":
        return "ok"
    return quality.split("; ", 1)[0].split(":", 1)[0].strip()[:80]


def model_scores(record: ImageRecord) -> Mapping[str, float | None]:
    """The model's own calibrated scores: ``model_score_<label>`` when a site file rewrote ``score_<label>``."""
    return record.model_scores if any(v is not None for v in record.model_scores.values()) else record.scores


def attribute(record: ImageRecord, name: str) -> str:
    """A record's value of a slicing attribute ("" when unknown)."""
    value = getattr(record, name, None)
    return str(value).strip() if value not in (None, "") else UNKNOWN


def _count(values: Iterable[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for v in values:
        out[v] = out.get(v, 0.0) + 1.0
    return out


def profile_of(records: Sequence[ImageRecord], labels: Sequence[str], *, name: str, kind: str = "slice") -> Profile:
    """The profile of ``records`` (any statuses) for ``labels``."""
    scored = [r for r in records if r.status is Status.SCORED]
    unscored = [r for r in records if r.status is not Status.SCORED]
    scores: dict[str, ScoreDistribution] = {}
    for label in labels:
        values = [v for r in scored if (v := model_scores(r).get(label)) is not None]
        scores[label] = ScoreDistribution.of_sample(values)
    scored_categories: dict[str, dict[str, float]] = {
        "priority": _count(r.priority.value if r.priority else "none" for r in scored),
        "quality": _count(quality_kind(r.quality) for r in scored if r.quality is not None),
    }
    for attr in COMPOSITION:
        scored_categories[attr] = _count(a for r in scored if (a := attribute(r, attr)) != UNKNOWN)
    row_categories = {
        "status": _count(r.status.value for r in records),
        "excluded": _count(f"{r.status.value}: {reason_kind(r.reason, r.path)}" for r in unscored),
    }
    shas = {r.model_sha256 for r in scored if r.model_sha256}
    return Profile(name=name, kind=kind, rows=len(records), scored=len(scored), scores=scores,
                   scored_categories=scored_categories, row_categories=row_categories,
                   model_sha256=shas.pop() if len(shas) == 1 else "")
