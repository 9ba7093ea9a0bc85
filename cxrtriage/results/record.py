"""The per-image record: one input file's status, scores, priority, notes and artefacts.

Every results table cxrtriage writes (``results.csv``/``.jsonl``, ``segment.csv``) is written from
``ImageRecord``s and read back into them; nothing else reads a results row by string key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cxrtriage.results.cells import clean_value


class Status(StrEnum):
    """What happened to one input file."""

    SCORED = "scored"  # read and run through the model
    EXCLUDED = "excluded"  # recognised, but not a frontal chest radiograph by the selection rules
    FAILED = "failed"  # could not be read (damaged, unsupported) or inference failed


class Priority(StrEnum):
    """A triage priority (of an image, or of a study: the highest of its assessed images)."""

    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"
    NORMAL = "normal"
    NOT_ASSESSED = "not_assessed"

    @property
    def rank(self) -> int:
        """Worklist order: critical, urgent, routine, not_assessed, normal (not assessed means "read it unaided")."""
        return _RANK[self]


_RANK = {Priority.CRITICAL: 0, Priority.URGENT: 1, Priority.ROUTINE: 2, Priority.NOT_ASSESSED: 3, Priority.NORMAL: 4}
# Most urgent first: the order of the worklist and of run.json's ``priority_levels``.
PRIORITY_LEVELS: tuple[Priority, ...] = tuple(sorted(Priority, key=lambda p: p.rank))


@dataclass(frozen=True, slots=True)
class LabelArea:
    """Area of one segmentation label, in pixels and, when the pixel spacing is known, in mm²."""

    px: int
    mm2: float | None = None


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """One input file in the results. ``None`` means "not known / not produced" (an empty cell).

    ``scores`` maps each model label to its calibrated score (the site's score with ``--site``; the model's own
    is then in ``model_scores``). ``reason`` explains an excluded/failed file; for a scored file it holds the
    reading notes. Artefact paths (``heatmaps``, ``mask_path``) are relative to the output folder.
    ``outside_lungs`` and ``shortcut`` come with heat maps; ``manufacturer`` ... ``sex`` from the DICOM header.
    ``extra`` carries columns of third-party pipeline hooks that this record does not know.
    """

    path: str
    status: Status
    reason: str | None = None
    input_kind: str | None = None
    study_key: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    view: str | None = None
    rows: int | None = None
    columns: int | None = None
    pixel_spacing_mm: tuple[float, float] | None = None
    # Where the image came from, for drift monitoring by subgroup (``cxrtriage monitor``); DICOM only. No patient
    # identifier: the study date is kept as its month, the patient's age as a band (``AGE_BANDS``).
    manufacturer: str | None = None
    device_model: str | None = None  # ManufacturerModelName
    institution: str | None = None  # InstitutionName
    study_month: str | None = None  # YYYY-MM of StudyDate (else SeriesDate, AcquisitionDate, ContentDate)
    age_band: str | None = None  # PatientAge, else BirthDate and the study date, as a band of AGE_BANDS
    sex: str | None = None  # PatientSex: M, F or O
    scores: Mapping[str, float | None] = field(default_factory=dict)
    model_scores: Mapping[str, float | None] = field(default_factory=dict)
    model_name: str | None = None
    model_version: str | None = None
    model_sha256: str | None = None
    model_integrity: str | None = None  # the manifest's integrity: which thresholds/calibration/labels decided
    priority: Priority | None = None
    priority_reason: str | None = None
    priority_finding: str | None = None
    priority_score: float | None = None
    site_file: str | None = None
    patient_age: float | None = None  # years at the study, from DICOM (PatientAge, or birth and study dates)
    population: str | None = None  # the population whose operating points decided (triage), or "unknown"
    # Where ``population`` came from (``POPULATION_SOURCES``), and the image's population estimate: the probability of
    # the population the model's estimate names (manifest ``population_estimate``), when it was computed.
    population_source: str | None = None
    population_probability: float | None = None
    quality: str | None = None
    # The resolution the model's inputs were made from: "full", or "1/2", "1/4", "1/8" of the image per side (reduced
    # decoding or block averaging, `cxrtriage.io.reduced`); scores from the two agree within 0.01.
    decoded_at: str | None = None
    heatmaps: tuple[str, ...] | None = None
    # Per finding with a heat map: the share of its evidence outside the lung fields (``cxrtriage.explain.gating``).
    outside_lungs: Mapping[str, float] = field(default_factory=dict)
    shortcut: str | None = None  # the "possible shortcut" note naming each finding whose share reached the level
    mask_path: str | None = None
    lung_area_px: int | None = None
    lung_area_mm2: float | None = None
    label_areas: Mapping[str, LabelArea] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check(_FIELD_SET)

    def _check(self, names: Collection[str]) -> None:
        """Validate and clean the fields ``names`` (at construction: all of them; in `replace`: the changed ones)."""
        if "status" in names and not isinstance(self.status, Status):
            raise TypeError(f"{self.path}: status must be a Status, got {self.status!r}")
        if "priority" in names and self.priority is not None and not isinstance(self.priority, Priority):
            raise TypeError(f"{self.path}: priority must be a Priority, got {self.priority!r}")
        # The record boundary: text from data (DICOM values, exception messages) loses its control characters
        # here, once, whatever wrote it; every table, report and message is built from records. ``path`` is
        # kept exactly as given: it must still open the file (the writers escape what UTF-8 cannot hold).
        for name in _TEXT_FIELDS:
            if name not in names:
                continue
            value = getattr(self, name)
            cleaned = clean_value(value)
            if cleaned != value:
                object.__setattr__(self, name, cleaned)
        if self.extra and "extra" in names:
            extra = {k: clean_value(v) for k, v in self.extra.items()}
            if extra != dict(self.extra):
                object.__setattr__(self, "extra", extra)

    @property
    def scored(self) -> bool:
        return self.status is Status.SCORED

    @property
    def study(self) -> str:
        """The study this file belongs to: its study key, else its own path."""
        return self.study_key or self.path

    @property
    def in_study(self) -> bool:
        """Whether this file is one of the images of its ``study``: counted on the worklist, shown in study reports.

        Not a file excluded for being no image at all (a README beside the images, a DICOM SR): the decode stage gives
        it no study key. Any other file is, a failed one without a key included (then a study of its own): it may be
        a damaged image, which must still reach a reader.
        """
        return self.status is not Status.EXCLUDED or bool(self.study_key)

    def replace(self, **changes: Any) -> ImageRecord:
        """A copy with ``changes`` (field names of this class; an unknown name is a ``TypeError``).

        What ``dataclasses.replace`` gives, at a fraction of its cost: only the changed fields are checked and cleaned
        (the others were at construction): 7 instead of 20 µs a call. A scored record is replaced ~7 times on its way to
        the results (model, scores, hooks), in the main process, which also runs the model."""
        unknown = changes.keys() - _FIELD_SET
        if unknown:
            raise TypeError(f"ImageRecord has no field(s) {', '.join(sorted(unknown))}")
        new = object.__new__(type(self))
        for name in FIELD_NAMES:
            object.__setattr__(new, name, changes[name] if name in changes else getattr(self, name))
        new._check(changes.keys())
        return new

    def with_note(self, note: str) -> ImageRecord:
        """A copy whose ``reason`` has ``note`` appended (``; ``-separated)."""
        return self.replace(reason=f"{self.reason}; {note}" if self.reason else note)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ImageRecord))
_FIELD_SET = frozenset(FIELD_NAMES)
# Text fields cleaned of control characters at construction: every optional text field (``path`` is not one).
_TEXT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ImageRecord)
                                      if f.type in ("str | None", "tuple[str, ...] | None"))
