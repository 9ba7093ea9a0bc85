"""Gather a results folder (records, worklist, run.json, the model manifest) into the studies to report."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from cxrtriage.errors import ConfigError, InputError, ModelError
from cxrtriage.explain.gating import SHORTCUT_LEVEL
from cxrtriage.model.manifest import LabelValidation, ModelManifest, OperatingPoint
from cxrtriage.model.registry import manifest_for_results
from cxrtriage.report.header import UNKNOWN, study_slug
from cxrtriage.results import (
    OPERATING_POINTS,
    ImageRecord,
    ModelRef,
    Priority,
    ResultsTable,
    RunRecord,
    display_text,
    read_results_dir,
    read_run_json,
    read_safe_csv,
)
from cxrtriage.triage.worklist import WORKLIST_NOTE_COLUMN

WORKLIST_CSV = "worklist.csv"


@dataclass(frozen=True, slots=True)
class Finding:
    """One label's calibrated score against the threshold in force, with its validation figures."""

    label: str
    score: float | None
    threshold: float | None
    threshold_kind: str  # rule_out / balanced / run (threshold from run.json not in the manifest) / unknown
    sensitivity: float | None = None
    specificity: float | None = None
    # May this label move the priority for the image's population (run.json ``deciding_labels``)? False: it is
    # reported only (not validated for that population); None: the run did not record it.
    decides: bool | None = None
    population: str | None = None
    # The label's held-out AUROC on the record's population (manifest ``label_validation``): the figure that says how
    # well it separates this patient's kind of patients, where ``sensitivity``/``specificity`` are the pooled
    # validation set's (mostly the population the model was trained on).
    population_validation: LabelValidation | None = None

    @property
    def reported_only(self) -> bool:
        return self.decides is False

    @property
    def positive(self) -> bool | None:
        """Score at or above the threshold; None when either is unknown."""
        if self.score is None or self.threshold is None:
            return None
        return self.score >= self.threshold


@dataclass(frozen=True, slots=True)
class Heatmap:
    """An overlay PNG from the explain step and, when saved beside it, its map at the original geometry (.npy)."""

    label: str
    path: Path
    method: str = ""
    map_path: Path | None = None
    outside_lungs: float | None = None  # share of the map's evidence outside the lung fields (the results row)


@dataclass(frozen=True, slots=True)
class ImageResult:
    """One record (one input file) with its paths resolved and its findings judged, as the report writers need it."""

    index: int
    record: ImageRecord
    path: Path
    findings: tuple[Finding, ...]
    heatmaps: tuple[Heatmap, ...]
    mask_path: Path | None
    notes: tuple[str, ...]

    @property
    def status(self) -> str:
        return self.record.status.value

    @property
    def scored(self) -> bool:
        return self.record.scored

    @property
    def is_dicom(self) -> bool:
        return (self.record.input_kind or "").lower() == "dicom"

    @property
    def reason(self) -> str:
        """Why an excluded/failed file was not scored ("" for a scored file: its reading notes are in ``notes``)."""
        return "" if self.scored else (self.record.reason or "").strip()

    @property
    def priority(self) -> str:
        return self.record.priority.value if self.record.priority else ""

    @property
    def shortcut(self) -> str:
        """The results row's "possible shortcut" note ("" when no map's evidence lay mostly outside the lungs)."""
        return self.record.shortcut or ""

    @property
    def priority_reason(self) -> str:
        return self.record.priority_reason or ""


@dataclass(frozen=True, slots=True)
class StudyReport:
    """A study: its key, a filesystem-safe slug, its images, and the study-level priority."""

    key: str
    slug: str
    images: tuple[ImageResult, ...]
    priority: str
    priority_reason: str
    rank: int

    @property
    def scored(self) -> tuple[ImageResult, ...]:
        return tuple(i for i in self.images if i.scored)


# A name is replaced only where it stands alone: "pa.dcm" inside "spa.dcm" is someone else's text.
_BEFORE, _AFTER = r"(?<![\w.-])", r"(?![\w-])"
_MIN_STEM = 4  # shorter stems ("pa", "ap") are words of the reports' own text, and too short to identify anyone


@dataclass(frozen=True, slots=True)
class InputNames:
    """Replaces what names an input in a text (its path, file name, stem, folder) by "image N" (``--deidentify``).

    File names often carry a medical record number or a patient name; the reports' text quotes them (the study's
    priority reason names the deciding file, a failure reason its path). ``prefix`` labels them per study
    ("study-3F... image 2") where the texts of several studies are shown together (the index).
    """

    pattern: re.Pattern[str] | None
    labels: dict[str, str]

    @classmethod
    def of(cls, studies: Iterable[StudyReport], *, with_slug: bool = False) -> InputNames:
        found: dict[str, set[str]] = {}

        def add(text: str, label: str) -> None:
            for t in {text, display_text(text)}:
                if t.strip("./\\"):
                    found.setdefault(t, set()).add(label)

        for study in studies:
            prefix = f"{study.slug} " if with_slug else ""
            for n, img in enumerate(study.images, start=1):
                label = f"{prefix}image {n}"
                for p in (Path(img.record.path), img.path):
                    add(str(p), label)
                    add(p.name, label)
                    if len(p.stem) >= _MIN_STEM:
                        add(p.stem, label)
                    add(str(p.parent), f"{prefix}input folder")
            if study.key.startswith("folder:"):
                add(study.key, f"{prefix}input folder")
                add(study.key.removeprefix("folder:"), f"{prefix}input folder")
        labels = {t: (next(iter(ls)) if len(ls) == 1 else "one of " + ", ".join(sorted(ls)))
                  for t, ls in found.items()}
        if not labels:
            return cls(None, {})
        alternatives = "|".join(re.escape(t) for t in sorted(labels, key=len, reverse=True))
        return cls(re.compile(f"{_BEFORE}(?:{alternatives}){_AFTER}"), labels)

    def __call__(self, text: str) -> str:
        if self.pattern is None or not text:
            return text
        return self.pattern.sub(lambda m: self.labels[m.group()], text)


@dataclass(frozen=True, slots=True)
class ResultsBundle:
    """Everything read from a results folder, grouped by study and ordered most urgent first.

    ``model`` names the model that produced the results (from its manifest, else the records, else run.json).
    """

    results_dir: Path
    run: RunRecord | None
    manifest: ModelManifest | None
    model: ModelRef
    labels: tuple[str, ...]
    operating_point: str
    operating_point_source: str
    studies: tuple[StudyReport, ...]
    images: tuple[ImageResult, ...]
    notes: tuple[str, ...]
    shortcut_level: float = SHORTCUT_LEVEL  # the run's "possible shortcut" level (run.json), for the captions


def _resolve(path_text: str, results_dir: Path, input_base: Path | None = None) -> Path:
    """Paths may be absolute, relative to the results dir, to the folder `predict` ran in (run.json ``cwd``),
    or to the working directory."""
    p = Path(path_text).expanduser()
    if p.is_absolute():
        return p
    for base in (results_dir, *([input_base] if input_base else []), Path.cwd()):
        if (base / p).exists():
            return (base / p).resolve()
    return results_dir / p


def read_worklist(results_dir: Path) -> dict[str, tuple[str, str]]:
    """worklist.csv (the triage's study-level decision): study key → (priority, reason), in worklist order.

    Cells read back as they were before ``write_worklist`` made them safe (formula guard, escaped text).
    """
    path = results_dir / WORKLIST_CSV
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in read_safe_csv(f, WORKLIST_NOTE_COLUMN)[1]:
            key = (r.get("study_key") or "").strip()
            if key and key not in out:
                out[key] = ((r.get("priority") or "").strip(), (r.get("priority_reason") or "").strip())
    return out


def model_identity(manifest: ModelManifest | None, table: ResultsTable, run: RunRecord | None) -> ModelRef:
    """Which model produced the results: its manifest, else the records' model columns, else run.json."""
    if manifest is not None:
        return ModelRef(manifest.name, manifest.version, manifest.sha256, str(manifest.path), manifest.integrity)
    first = next((r for r in table.records if r.model_name), None)
    if first is not None:
        return ModelRef(first.model_name or UNKNOWN, first.model_version or UNKNOWN, first.model_sha256 or UNKNOWN,
                        integrity=first.model_integrity or (run.model.integrity if run is not None else ""))
    if run is not None:
        return run.model
    return ModelRef(UNKNOWN, UNKNOWN, UNKNOWN)


def find_manifest(run: RunRecord | None, table: ResultsTable, explicit: str | Path | None,
                  results_dir: Path) -> tuple[ModelManifest | None, str]:
    """The classifier manifest for these results, and a note saying how it was found (or why not).

    Tried in order: an explicit name/path (``--model``); the manifest path in run.json; the model name the results
    record, through the model registry. Each is checked against the results' sha256 by ``manifest_for_results``,
    and against the integrity they record (a manifest edited and re-sealed since may hold other thresholds and
    figures than those that decided these results). A report never fails for want of a manifest: thresholds and
    validation figures are then "unknown".
    """
    names = table.distinct("model_name") or ([run.model.name] if run is not None and run.model.name else [])
    shas = table.distinct("model_sha256") or ([run.model.sha256] if run is not None and run.model.sha256 else [])
    seals = table.distinct("model_integrity")
    seal = seals[0] if seals else (run.model.integrity if run is not None else "")
    candidates: list[tuple[str, str | Path | None]] = [("--model", explicit)] if explicit else []
    if run is not None and run.model.manifest:
        candidates.append(("run.json", _resolve(run.model.manifest, results_dir)))
    candidates.append(("model registry", None))
    problems: list[str] = []
    for source, target in candidates:
        try:
            man = manifest_for_results(names, shas, target, where=results_dir)
        except (ConfigError, ModelError) as exc:
            problems.append(f"{source}: {exc}")
            continue
        if seal and man.integrity != seal.lower():
            problems.append(f"{source}: manifest {man.path} has integrity {man.short_integrity}, the results record "
                            f"{seal[:12]} (it was edited and re-sealed since they were made)")
            continue
        return man, f"model manifest {man.path} (from {source})"
    return None, f"model manifest not found ({'; '.join(problems)}); thresholds and validation figures are unknown"


def resolve_findings(record: ImageRecord, labels: tuple[str, ...], manifest: ModelManifest | None,
                     run: RunRecord | None, operating_point: str) -> tuple[Finding, ...]:
    """Per label: the score, the threshold in force (run.json, else the manifest's operating point) and its figures,
    and whether the label decides the priority for the record's population (`deciding_labels`)."""
    out: list[Finding] = []
    deciding = deciding_labels(run, record.population)
    for label in labels:
        score = record.scores.get(label)
        lt = manifest.thresholds.get(label) if manifest else None
        op: OperatingPoint | None = getattr(lt, operating_point) if lt is not None else None
        run_thr = run.threshold_in_force(label) if run is not None else None
        thr: float | None
        kind: str
        if run_thr is not None:
            thr = run_thr
            # the kind the run recorded; two operating points may share a value (then matching it would guess)
            recorded = run.thresholds[label].get("kind") if run is not None else None
            match = next((k for k in ((recorded,) if recorded in OPERATING_POINTS else OPERATING_POINTS)
                          if lt is not None and math.isclose(getattr(lt, k).threshold, thr, abs_tol=1e-9)), None)
            kind = match or "run"
            op = getattr(lt, match) if match and lt is not None else None
        elif op is not None:
            thr, kind = op.threshold, operating_point
        else:
            thr, kind = None, UNKNOWN
        out.append(Finding(label=label, score=score, threshold=thr, threshold_kind=kind,
                           sensitivity=op.sensitivity if op else None, specificity=op.specificity if op else None,
                           decides=None if deciding is None else label in deciding,
                           population=record.population if deciding is not None else None,
                           population_validation=(manifest.label_validation.get(label, {}).get(record.population)
                                                  if manifest is not None and record.population else None)))
    return tuple(out)


def deciding_labels(run: RunRecord | None, population: str | None) -> frozenset[str] | None:
    """The labels that could move the priority for ``population`` in the run (run.json ``study_operating_points``
    ``deciding_labels``: validated for it and not ignored by the policy); None when the run did not record them."""
    sop = run.sections.get("study_operating_points") if run is not None else None
    per = sop.get("deciding_labels") if isinstance(sop, Mapping) else None
    if not isinstance(per, Mapping) or population is None or not isinstance(per.get(population), list):
        return None
    return frozenset(str(x) for x in per[population])


_OVERLAY_NAME = re.compile(r"^(?P<stem>.*)__(?P<label>[^_].*?)__(?P<method>[A-Za-z0-9.-]+)$")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"


def _heatmaps(paths: tuple[str, ...] | None, labels: tuple[str, ...], results_dir: Path,
              shares: Mapping[str, float] | None = None) -> tuple[Heatmap, ...]:
    """Overlays named ``<stem>__<label>__<method>.png`` (the name gives the label and the method), with the share of
    each map's evidence outside the lungs from ``shares`` (the record's ``outside_lungs``)."""
    out: list[Heatmap] = []
    by_safe = {_safe(lab): lab for lab in labels}
    for p in paths or ():
        stem = Path(p).stem
        m = _OVERLAY_NAME.match(stem)
        label, method = (by_safe.get(m.group("label"), m.group("label")), m.group("method")) if m else ("", "")
        if not label:  # another naming: the longest label the file name contains
            hits = [lab for lab in labels if lab.lower() in stem.lower()]
            label = max(hits, key=len) if hits else stem
        path = _resolve(p, results_dir)
        npy = path.with_suffix(".npy")
        out.append(Heatmap(label=label, path=path, method=method, map_path=npy if npy.is_file() else None,
                           outside_lungs=(shares or {}).get(label)))
    return tuple(out)


def _notes(record: ImageRecord) -> tuple[str, ...]:
    """Reading notes of a scored file (its ``reason``), then the quality verdict."""
    notes: list[str] = []
    if record.scored and record.reason:
        notes += [n.strip() for n in record.reason.split("; ") if n.strip()]
    if record.quality:
        notes.append("quality checks passed" if record.quality == "ok" else f"quality check failed: {record.quality}")
    return tuple(dict.fromkeys(notes))


def image_result(index: int, record: ImageRecord, labels: tuple[str, ...], manifest: ModelManifest | None,
                 run: RunRecord | None, operating_point: str, results_dir: Path) -> ImageResult:
    return ImageResult(
        index=index,
        record=record,
        path=_resolve(record.path, results_dir, Path(run.cwd) if run is not None and run.cwd else None),
        findings=resolve_findings(record, labels, manifest, run, operating_point) if record.scored else (),
        heatmaps=_heatmaps(record.heatmaps, labels, results_dir, record.outside_lungs),
        mask_path=_resolve(record.mask_path, results_dir) if record.mask_path else None,
        notes=_notes(record),
    )


def shortcut_level(run: RunRecord | None) -> float:
    """The share of evidence outside the lungs at which the run called a map a possible shortcut (run.json's
    ``heatmaps.outside_lungs.shortcut_level``; the current default when the run does not say)."""
    section = run.sections.get("heatmaps") if run is not None else None
    outside = section.get("outside_lungs") if isinstance(section, Mapping) else None
    level = outside.get("shortcut_level") if isinstance(outside, Mapping) else None
    return float(level) if isinstance(level, int | float) and 0 < level <= 1 else SHORTCUT_LEVEL


def _rank(priority: str, levels: tuple[str, ...]) -> int:
    """Order of a priority: run.json's ``priority_levels`` first, then the known levels, then unknown, then none."""
    if priority in levels:
        return levels.index(priority)
    known = [p.value for p in sorted(Priority, key=lambda p: p.rank)]
    if priority in known:
        return len(levels) + known.index(priority)
    return len(levels) + len(known) + (0 if priority else 1)


def load_results(
    results_dir: str | Path,
    *,
    model: str | Path | None = None,
    operating_point: str | None = None,
    deidentified: bool = False,
) -> ResultsBundle:
    """Read a results folder and group its records into studies, most urgent first.

    ``model`` overrides the manifest lookup (a name, folder, ONNX or manifest path); ``operating_point``
    (``rule_out``/``balanced``) overrides the one recorded in run.json for labels whose threshold run.json
    does not give. ``deidentified`` gives the studies pseudonymous slugs (file names).
    """
    rdir = Path(results_dir)
    if not rdir.is_dir():
        raise InputError(f"{rdir}: results folder not found; give the --out folder of `cxrtriage predict`")
    if operating_point and operating_point not in OPERATING_POINTS:
        raise ConfigError(f"--operating-point must be one of {', '.join(OPERATING_POINTS)}, not '{operating_point}'")
    table = read_results_dir(rdir)
    run = read_run_json(rdir)
    notes: list[str] = [] if run is not None else ["run.json not found: run provenance is unknown"]
    manifest, how = find_manifest(run, table, model, rdir)
    notes.append(how)
    if operating_point:
        op, op_src = operating_point, "command line"
    elif run is not None and run.operating_point in OPERATING_POINTS:
        op, op_src = run.operating_point, "run.json"
    else:
        op, op_src = "balanced", "report default (run.json names no operating point)"
        notes.append("operating point not recorded in run.json: the report uses the manifest's 'balanced' thresholds")
    labels = manifest.labels if manifest is not None else table.labels
    images = tuple(image_result(i, r, labels, manifest, run, op, rdir) for i, r in enumerate(table.records))

    groups: dict[str, list[ImageResult]] = {}
    for img in images:  # a file that is no image (a README, a DICOM SR) is in no study: the index lists it alone
        if img.record.in_study:
            groups.setdefault(img.record.study, []).append(img)
    worklist = read_worklist(rdir)
    levels = run.priority_levels if run is not None else ()
    studies: list[StudyReport] = []
    for key, imgs in groups.items():
        prioritised = [i for i in imgs if i.priority]
        top = min(prioritised, key=lambda i: _rank(i.priority, levels)) if prioritised else None
        priority, reason = (top.priority, top.priority_reason) if top else ("", "")
        if key in worklist and worklist[key][0]:  # the triage's own study-level decision wins
            priority, reason = worklist[key]
        studies.append(StudyReport(key=key, slug=study_slug(key, deidentified=deidentified), images=tuple(imgs),
                                   priority=priority, priority_reason=reason, rank=_rank(priority, levels)))
    if worklist:
        pos = {k: n for n, k in enumerate(worklist)}
        studies.sort(key=lambda s: (pos.get(s.key, len(pos)), s.rank, s.key))
    else:
        studies.sort(key=lambda s: (s.rank, s.key))
    slugs: dict[str, int] = {}
    unique: list[StudyReport] = []
    for s in studies:  # two keys can sanitise to the same slug only in theory; keep file names unique anyway
        n = slugs.get(s.slug, 0)
        slugs[s.slug] = n + 1
        unique.append(s if n == 0 else replace(s, slug=f"{s.slug}-{n}"))
    return ResultsBundle(results_dir=rdir, run=run, manifest=manifest, model=model_identity(manifest, table, run),
                         labels=labels, operating_point=op, operating_point_source=op_src, studies=tuple(unique),
                         images=images, notes=tuple(notes), shortcut_level=shortcut_level(run))
