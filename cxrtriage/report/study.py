"""Gather a results directory (results.jsonl, worklist.csv, run.json, manifest) into studies to report."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cxrtriage.errors import InputError
from cxrtriage.model.manifest import ModelManifest, load_manifest

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
OPERATING_POINTS = ("rule_out", "balanced")
ENV_PSEUDONYM_KEY = "CXRTRIAGE_PSEUDONYM_KEY"
_DEFAULT_PSEUDONYM_KEY = b"cxrtriage-pseudonym-v1"
# Used only to order studies when neither worklist.csv nor run.json gives the order (most urgent first).
# cxrtriage.triage uses critical > urgent > routine > not_assessed > normal.
_KNOWN_PRIORITIES = ("critical", "urgent", "high", "routine", "medium", "not_assessed", "normal", "low")


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Run provenance read from ``run.json`` (``unknown`` where the file or a field is absent)."""

    tool_version: str = UNKNOWN
    model_name: str = UNKNOWN
    model_version: str = UNKNOWN
    model_sha256: str = UNKNOWN
    manifest_path: str = ""
    operating_point: str = ""
    thresholds: dict[str, float] = field(default_factory=dict)
    policy: str = UNKNOWN
    started_at: str = UNKNOWN
    finished_at: str = UNKNOWN
    segmenter_name: str = ""
    segmenter_version: str = ""
    segmenter_labels: tuple[str, ...] = ()
    priority_levels: tuple[str, ...] = ()
    cwd: str = ""
    found: bool = False


@dataclass(frozen=True, slots=True)
class Finding:
    """One label's calibrated score against the threshold in force, with its validation figures."""

    label: str
    score: float | None
    threshold: float | None
    threshold_kind: str  # rule_out / balanced / run (threshold from run.json not in the manifest) / unknown
    sensitivity: float | None = None
    specificity: float | None = None

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


@dataclass(frozen=True, slots=True)
class ImageResult:
    """One results row (one input file) in the form the report writers need."""

    index: int
    path: Path
    status: str
    reason: str
    input_kind: str
    sop_instance_uid: str
    series_instance_uid: str
    view: str
    findings: tuple[Finding, ...]
    heatmaps: tuple[Heatmap, ...]
    mask_path: Path | None
    lung_area_mm2: float | None
    lung_area_px: float | None
    priority: str
    priority_reason: str
    notes: tuple[str, ...]
    row: dict[str, Any]

    @property
    def scored(self) -> bool:
        return self.status == "scored"

    @property
    def is_dicom(self) -> bool:
        return self.input_kind == "dicom"


@dataclass(frozen=True, slots=True)
class PatientHeader:
    """Patient and study header shown on a report (read from the source DICOM)."""

    patient_name: str = UNKNOWN
    patient_id: str = UNKNOWN
    birth_date: str = UNKNOWN
    sex: str = UNKNOWN
    study_date: str = UNKNOWN
    accession: str = UNKNOWN
    description: str = UNKNOWN
    study_uid: str = UNKNOWN
    deidentified: bool = False


@dataclass(frozen=True, slots=True)
class StudyReport:
    """A study: its key, a filesystem-safe slug, header, images, and the study-level priority."""

    key: str
    slug: str
    header: PatientHeader
    images: tuple[ImageResult, ...]
    priority: str
    priority_reason: str
    rank: int

    @property
    def scored(self) -> tuple[ImageResult, ...]:
        return tuple(i for i in self.images if i.scored)


@dataclass(frozen=True, slots=True)
class ResultsBundle:
    """Everything read from a results directory, grouped by study and ordered most urgent first."""

    results_dir: Path
    run: RunInfo
    manifest: ModelManifest | None
    labels: tuple[str, ...]
    operating_point: str
    operating_point_source: str
    studies: tuple[StudyReport, ...]
    images: tuple[ImageResult, ...]
    notes: tuple[str, ...]


# --------------------------------------------------------------------------- small parsers


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return str(value).strip()


def _float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _list(value: Any) -> list[Any]:
    """A list column: a JSON list, a JSON-encoded string, or a ';'/'|'-separated string."""
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        s = value.strip()
        if s.startswith("["):
            try:
                parsed = json.loads(s)
                return list(parsed) if isinstance(parsed, list) else [parsed]
            except json.JSONDecodeError:
                pass
        return [p.strip() for p in re.split(r"[;|]", s) if p.strip()]
    return [value]


def _resolve(path_text: str, results_dir: Path, input_base: Path | None = None) -> Path:
    """Paths may be absolute, relative to the results dir, to the folder `predict` ran in (run.json ``cwd``),
    or to the working directory."""
    p = Path(path_text).expanduser()
    if p.is_absolute():
        return p
    for base in (results_dir, *([input_base] if input_base else []), Path.cwd()):
        if (base / p).exists():
            return (base / p).resolve()
    return (results_dir / p)


def read_run_info(results_dir: Path) -> RunInfo:
    """Read ``run.json``; tolerate nested (``model: {...}``) or flat (``model_name``) layouts."""
    path = results_dir / "run.json"
    if not path.is_file():
        return RunInfo()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: cannot read run provenance ({exc}); fix or delete the file and run the report again") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: run.json must hold a JSON object")
    model: dict[str, Any] = data["model"] if isinstance(data.get("model"), dict) else {}
    seg: dict[str, Any] = data["segmenter"] if isinstance(data.get("segmenter"), dict) else {}

    def pick(*vals: Any) -> str:
        for v in vals:
            t = _text(v)
            if t:
                return t
        return UNKNOWN

    thresholds: dict[str, float] = {}
    raw_thr = data.get("thresholds") or model.get("thresholds") or {}
    op = _text(data.get("operating_point") or model.get("operating_point") or data.get("threshold_kind"))
    if isinstance(raw_thr, dict):
        for label, t in raw_thr.items():
            if isinstance(t, dict):
                v = _float(t.get("threshold", t.get("value")))
                op = op or _text(t.get("kind") or t.get("operating_point"))
            else:
                v = _float(t)
            if v is not None:
                thresholds[str(label)] = v
    policy = data.get("policy")
    if isinstance(policy, dict):
        policy_text = pick(policy.get("name"), policy.get("path"), json.dumps(policy, sort_keys=True)[:200])
    else:
        policy_text = pick(policy)
    levels = data.get("priority_levels") or (policy.get("levels") if isinstance(policy, dict) else None) or []
    return RunInfo(
        tool_version=pick(data.get("tool_version"), data.get("cxrtriage_version"), data.get("version")),
        model_name=pick(model.get("name"), data.get("model_name")),
        model_version=pick(model.get("version"), data.get("model_version")),
        model_sha256=pick(model.get("sha256"), data.get("model_sha256")),
        manifest_path=_text(model.get("manifest") or model.get("manifest_path") or data.get("manifest")),
        operating_point=op,
        thresholds=thresholds,
        policy=policy_text,
        started_at=pick(data.get("started_at"), data.get("start_time"), data.get("started")),
        finished_at=pick(data.get("finished_at"), data.get("end_time"), data.get("finished"), data.get("ended_at")),
        segmenter_name=_text(seg.get("name") or data.get("segmenter_name")),
        segmenter_version=_text(seg.get("version") or data.get("segmenter_version")),
        segmenter_labels=tuple(str(x) for x in (seg.get("labels") or data.get("segmenter_labels") or [])),
        priority_levels=tuple(str(x).lower() for x in levels if isinstance(x, str)),
        cwd=_text(data.get("cwd") or data.get("working_directory")),
        found=True,
    )


def read_rows(results_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``results.jsonl`` (preferred) or ``results.csv``; a bad line is skipped with a warning."""
    jsonl, csv_path = results_dir / "results.jsonl", results_dir / "results.csv"
    rows: list[dict[str, Any]] = []
    if jsonl.is_file():
        for n, line in enumerate(jsonl.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                log.warning("%s line %d: not valid JSON (%s); row skipped", jsonl, n, exc)
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows
    if csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as f:
            return [dict(r) for r in csv.DictReader(f)]
    raise InputError(
        f"{results_dir}: neither results.jsonl nor results.csv found; point the report at the --out folder of "
        "`cxrtriage predict`"
    )


def read_worklist(results_dir: Path) -> dict[str, tuple[str, str]]:
    """worklist.csv (the triage's study-level decision): study key → (priority, reason), in worklist order."""
    path = results_dir / "worklist.csv"
    if not path.is_file():
        return {}
    out: dict[str, tuple[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            key = _text(r.get("study_key") or r.get("study_instance_uid"))
            if key and key not in out:
                out[key] = (_text(r.get("priority")), _text(r.get("priority_reason") or r.get("reason")))
    return out


# --------------------------------------------------------------------------- manifest and thresholds


def find_manifest(
    run: RunInfo, rows: list[dict[str, Any]], explicit: str | Path | None, results_dir: Path
) -> tuple[ModelManifest | None, str]:
    """The classifier manifest for these results, and a note saying how it was found (or why not).

    Order: an explicit path/name; the manifest path in run.json; the model name through the model
    registry. A manifest whose sha256 differs from the results' model sha256 is not used.
    """
    sha = next((_text(r.get("model_sha256")) for r in rows if _text(r.get("model_sha256"))), "")
    if not sha and run.model_sha256 != UNKNOWN:
        sha = run.model_sha256
    name = next((_text(r.get("model_name")) for r in rows if _text(r.get("model_name"))), "")
    if not name and run.model_name != UNKNOWN:
        name = run.model_name
    candidates: list[tuple[str, Any]] = []
    if explicit:
        candidates.append(("--model", explicit))
    if run.manifest_path:
        candidates.append(("run.json", _resolve(run.manifest_path, results_dir)))
    if name:
        candidates.append(("model registry", name))
    from cxrtriage.model.registry import resolve_manifest_path

    problems: list[str] = []
    for source, target in candidates:
        try:
            man = load_manifest(resolve_manifest_path(target))
        except Exception as exc:  # a missing model must not stop a report: thresholds become "unknown"
            problems.append(f"{source}: {exc}")
            continue
        if sha and man.sha256 != sha.lower():
            problems.append(f"{source}: manifest {man.path} is for sha256 {man.short_sha}, results were made with {sha[:12]}")
            continue
        return man, f"model manifest {man.path} (from {source})"
    why = "; ".join(problems) if problems else "no model name in the results"
    return None, f"model manifest not found ({why}); thresholds and validation figures are unknown"


def resolve_findings(
    row: dict[str, Any], labels: tuple[str, ...], manifest: ModelManifest | None, run: RunInfo, operating_point: str
) -> tuple[Finding, ...]:
    """Per label: the score, the threshold in force (run.json, else the manifest's operating point) and its figures."""
    out: list[Finding] = []
    for label in labels:
        score = _float(row.get(f"score_{label}"))
        lt = manifest.thresholds.get(label) if manifest else None
        op = getattr(lt, operating_point) if lt is not None and operating_point in OPERATING_POINTS else None
        thr: float | None
        kind: str
        if label in run.thresholds:
            thr = run.thresholds[label]
            match = next((k for k in OPERATING_POINTS if lt is not None and math.isclose(getattr(lt, k).threshold, thr,
                                                                                          abs_tol=1e-9)), None)
            kind = match or "run"
            op = getattr(lt, match) if match and lt is not None else None
        elif op is not None:
            thr, kind = op.threshold, operating_point
        else:
            thr, kind = None, UNKNOWN
        out.append(Finding(label=label, score=score, threshold=thr, threshold_kind=kind,
                           sensitivity=op.sensitivity if op else None, specificity=op.specificity if op else None))
    return tuple(out)


def labels_from(rows: list[dict[str, Any]], manifest: ModelManifest | None) -> tuple[str, ...]:
    if manifest is not None:
        return manifest.labels
    seen: list[str] = []
    for r in rows:
        for k in r:
            if k.startswith("score_") and k[6:] not in seen:
                seen.append(k[6:])
    return tuple(seen)


_OVERLAY_NAME = re.compile(r"^(?P<stem>.*)__(?P<label>[^_].*?)__(?P<method>[A-Za-z0-9.-]+)$")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "x"


def _heatmaps(value: Any, labels: tuple[str, ...], results_dir: Path) -> tuple[Heatmap, ...]:
    """Overlay entries: paths (``<stem>__<label>__<method>.png`` names the label) or {path, label, method} dicts."""
    out: list[Heatmap] = []
    by_safe = {_safe(lab): lab for lab in labels}
    for item in _list(value):
        if isinstance(item, dict):
            p, label, method = _text(item.get("path")), _text(item.get("label")), _text(item.get("method"))
        else:
            p, label, method = _text(item), "", ""
        if not p:
            continue
        stem = Path(p).stem
        m = _OVERLAY_NAME.match(stem)
        if m:
            label = label or by_safe.get(m.group("label"), m.group("label"))
            method = method or m.group("method")
        if not label:  # another naming: the longest label the file name contains
            hits = [lab for lab in labels if lab.lower() in stem.lower()]
            label = max(hits, key=len) if hits else stem
        path = _resolve(p, results_dir)
        npy = path.with_suffix(".npy")
        out.append(Heatmap(label=label, path=path, method=method, map_path=npy if npy.is_file() else None))
    return tuple(out)


def _notes(row: dict[str, Any]) -> tuple[str, ...]:
    notes: list[str] = []
    for key in ("notes", "quality_notes", "quality", "warnings"):
        items = [_text(x) for x in _list(row.get(key)) if _text(x)]
        if key == "quality":  # predict's quality column: "ok" or the failed checks
            items = ["quality checks passed" if x == "ok" else f"quality check failed: {x}" for x in items]
        notes.extend(items)
    return tuple(dict.fromkeys(notes))


def image_result(index: int, row: dict[str, Any], labels: tuple[str, ...], manifest: ModelManifest | None, run: RunInfo,
                 operating_point: str, results_dir: Path) -> ImageResult:
    mask = _text(row.get("mask_path"))
    status = _text(row.get("status")) or UNKNOWN
    reason = _text(row.get("reason"))
    notes = _notes(row)
    if status == "scored" and reason:  # for a scored file, 'reason' holds reading notes, not a reason to exclude
        notes = tuple(dict.fromkeys((*(n.strip() for n in reason.split("; ") if n.strip()), *notes)))
        reason = ""
    return ImageResult(
        index=index,
        path=_resolve(_text(row.get("path")), results_dir, Path(run.cwd) if run.cwd else None),
        status=status,
        reason=reason,
        input_kind=_text(row.get("input_kind")).lower(),
        sop_instance_uid=_text(row.get("sop_instance_uid")),
        series_instance_uid=_text(row.get("series_instance_uid")),
        view=_text(row.get("view")),
        findings=resolve_findings(row, labels, manifest, run, operating_point) if status == "scored" else (),
        heatmaps=_heatmaps(row.get("heatmaps"), labels, results_dir),
        mask_path=_resolve(mask, results_dir) if mask else None,
        lung_area_mm2=_float(row.get("lung_area_mm2")),
        lung_area_px=_float(row.get("lung_area_px")),
        priority=_text(row.get("priority")),
        priority_reason=_text(row.get("priority_reason")),
        notes=notes,
        row=row,
    )


# --------------------------------------------------------------------------- headers and pseudonyms


def _dicom_text(ds: Any, keyword: str) -> str:
    v = ds.get(keyword)
    t = _text(v)
    return t if t else UNKNOWN


def read_header(images: tuple[ImageResult, ...], key: str) -> PatientHeader:
    """Patient/study header from the first readable DICOM source of the study (``unknown`` otherwise)."""
    import pydicom

    for img in images:
        if not img.is_dicom or not img.path.is_file():
            continue
        try:
            ds = pydicom.dcmread(img.path, stop_before_pixels=True)
        except Exception as exc:  # an unreadable source only loses the header, never the report
            log.warning("%s: cannot read the DICOM header for the report (%s)", img.path, type(exc).__name__)
            continue
        return PatientHeader(
            patient_name=_dicom_text(ds, "PatientName").replace("^", " ").strip() or UNKNOWN,
            patient_id=_dicom_text(ds, "PatientID"),
            birth_date=_fmt_date(_dicom_text(ds, "PatientBirthDate")),
            sex=_dicom_text(ds, "PatientSex"),
            study_date=_fmt_date(_dicom_text(ds, "StudyDate")),
            accession=_dicom_text(ds, "AccessionNumber"),
            description=_dicom_text(ds, "StudyDescription"),
            study_uid=_dicom_text(ds, "StudyInstanceUID"),
        )
    na = "not available (no DICOM source)"
    return PatientHeader(patient_name=na, patient_id=na, birth_date=na, sex=na, study_date=na, accession=na,
                         description=na, study_uid=key if images and images[0].is_dicom else UNKNOWN)


def _fmt_date(da: str) -> str:
    return f"{da[:4]}-{da[4:6]}-{da[6:8]}" if re.fullmatch(r"\d{8}", da) else da


def pseudonym_key() -> bytes:
    """The HMAC key for pseudonyms: ``$CXRTRIAGE_PSEUDONYM_KEY`` (set it per site), else a fixed default."""
    env = os.environ.get(ENV_PSEUDONYM_KEY, "")
    return env.encode("utf-8") if env else _DEFAULT_PSEUDONYM_KEY


def pseudonym(value: str, *, prefix: str = "ANON-", key: bytes | None = None) -> str:
    """A stable pseudonym: HMAC-SHA256 of ``value`` (same input and key → same pseudonym)."""
    digest = hmac.new(key or pseudonym_key(), value.encode("utf-8"), hashlib.sha256).hexdigest()
    return prefix + digest[:10].upper()


def pseudonym_uid(value: str, *, key: bytes | None = None) -> str:
    """A stable UID-shaped pseudonym (2.25.<decimal>) for a StudyInstanceUID."""
    digest = hmac.new(key or pseudonym_key(), b"uid:" + value.encode("utf-8"), hashlib.sha256).digest()
    return "2.25." + str(int.from_bytes(digest[:15], "big"))


def deidentify(header: PatientHeader, study_key: str, *, key: bytes | None = None) -> PatientHeader:
    """Replace name/ID/accession/UID with stable pseudonyms and remove dates (birth and study)."""
    known_id = header.patient_id not in (UNKNOWN, "") and "not available" not in header.patient_id
    ident = header.patient_id if known_id else study_key
    removed = "removed (de-identified)"
    return PatientHeader(
        patient_name=pseudonym("patient:" + ident, key=key),
        patient_id=pseudonym("patient:" + ident, key=key),
        birth_date=removed,
        sex=header.sex,
        study_date=removed,
        accession=removed,
        description=header.description,
        study_uid=pseudonym_uid(header.study_uid if header.study_uid != UNKNOWN else study_key, key=key),
        deidentified=True,
    )


def study_slug(key: str, *, deidentified: bool) -> str:
    """A filesystem-safe, stable folder/file name for a study (a pseudonym when de-identified)."""
    if deidentified:
        return pseudonym("study:" + key, prefix="study-")
    if re.fullmatch(r"[0-9.]{1,64}", key):
        return key
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).name or key).strip("._")[:40] or "study"
    return f"{base}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:8]}"


# --------------------------------------------------------------------------- priorities


def _rank_fn(run: RunInfo) -> Any:
    levels = run.priority_levels

    def rank(priority: str) -> int:
        p = priority.lower()
        if p in levels:
            return levels.index(p)
        if p in _KNOWN_PRIORITIES:
            return len(levels) + _KNOWN_PRIORITIES.index(p)
        return len(levels) + len(_KNOWN_PRIORITIES) + (0 if p else 1)

    return rank


# --------------------------------------------------------------------------- entry point


def load_results(
    results_dir: str | Path,
    *,
    model: str | Path | None = None,
    operating_point: str | None = None,
    deidentify_headers: bool = False,
) -> ResultsBundle:
    """Read a results directory and group its rows into studies, most urgent first.

    ``model`` overrides the manifest lookup (a name, folder, ONNX or manifest path); ``operating_point``
    (``rule_out``/``balanced``) overrides the one recorded in run.json for labels whose threshold run.json
    does not give.
    """
    rdir = Path(results_dir)
    if not rdir.is_dir():
        raise InputError(f"{rdir}: results folder not found; give the --out folder of `cxrtriage predict`")
    run = read_run_info(rdir)
    rows = read_rows(rdir)
    notes: list[str] = []
    if not run.found:
        notes.append("run.json not found: run provenance is unknown")
    manifest, how = find_manifest(run, rows, model, rdir)
    notes.append(how)
    if operating_point:
        if operating_point not in OPERATING_POINTS:
            from cxrtriage.errors import ConfigError

            raise ConfigError(f"--operating-point must be one of {', '.join(OPERATING_POINTS)}, not '{operating_point}'")
        op, op_src = operating_point, "command line"
    elif run.operating_point in OPERATING_POINTS:
        op, op_src = run.operating_point, "run.json"
    else:
        op, op_src = "balanced", "report default (run.json names no operating point)"
        notes.append("operating point not recorded in run.json: the report uses the manifest's 'balanced' thresholds")
    labels = labels_from(rows, manifest)
    images = tuple(image_result(i, r, labels, manifest, run, op, rdir) for i, r in enumerate(rows))

    groups: dict[str, list[ImageResult]] = {}
    for img in images:
        key = _text(img.row.get("study_key")) or _text(img.row.get("path")) or str(img.path)
        groups.setdefault(key, []).append(img)
    worklist = read_worklist(rdir)
    rank = _rank_fn(run)
    studies: list[StudyReport] = []
    for key, imgs in groups.items():
        t = tuple(imgs)
        prioritised = [i for i in t if i.priority]
        top = min(prioritised, key=lambda i: rank(i.priority)) if prioritised else None
        priority, reason = (top.priority, top.priority_reason) if top else ("", "")
        if key in worklist and worklist[key][0]:  # the triage's own study-level decision wins
            priority, reason = worklist[key]
        header = read_header(t, key)
        if deidentify_headers:
            header = deidentify(header, key)
        studies.append(StudyReport(
            key=key,
            slug=study_slug(key, deidentified=deidentify_headers),
            header=header,
            images=t,
            priority=priority,
            priority_reason=reason,
            rank=rank(priority),
        ))
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
    return ResultsBundle(
        results_dir=rdir,
        run=run,
        manifest=manifest,
        labels=labels,
        operating_point=op,
        operating_point_source=op_src,
        studies=tuple(unique),
        images=images,
        notes=tuple(notes),
    )
