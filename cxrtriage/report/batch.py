"""Write every report of a results directory: per-study HTML/PDF, the batch index, DICOM results, PACS send."""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtriage import __version__
from cxrtriage.errors import OutputError
from cxrtriage.report import html as html_writer
from cxrtriage.report.send import Destination, SendResult
from cxrtriage.report.study import UNKNOWN, ImageResult, ResultsBundle, StudyReport, load_results
from cxrtriage.report.view import DISCLAIMER, provenance, study_view

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StudyOutput:
    """What was written for one study, and what could not be."""

    key: str
    slug: str
    html: Path | None = None
    pdf: Path | None = None
    dicom: tuple[Path, ...] = ()
    errors: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReportSummary:
    results_dir: Path
    index: Path
    studies: tuple[StudyOutput, ...]
    sent: tuple[SendResult, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def errors(self) -> list[str]:
        return [e for s in self.studies for e in s.errors]

    @property
    def dicom_files(self) -> list[Path]:
        return [p for s in self.studies for p in s.dicom]


def _write(path: Path, data: bytes | str) -> Path:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror}); check the folder exists and is writable") from exc
    return path


def _study_label(study: StudyReport) -> str:
    h = study.header
    parts = [p for p in (h.patient_name, h.patient_id if h.patient_id != h.patient_name else "", h.study_date,
                         h.description) if p and p != UNKNOWN and "not available" not in p and "removed" not in p]
    return " · ".join(parts) or study.slug


def _image_source(study: StudyReport, img: ImageResult, n: int, deidentify: bool) -> str:
    return f"{study.slug} image {n}" if deidentify else str(img.path)


def write_index(bundle: ResultsBundle, outputs: list[StudyOutput], out_dir: Path, *, deidentify: bool,
                notes: list[str]) -> Path:
    """``report/index.html``: the worklist most urgent first, counts, failures and exclusions, provenance."""
    by_key = {o.key: o for o in outputs}
    rows: list[dict[str, Any]] = []
    problems: list[dict[str, str]] = []
    for study in bundle.studies:
        o = by_key.get(study.key)
        positives = sorted({f.label for i in study.scored for f in i.findings if f.positive})
        rows.append({
            "priority": study.priority or UNKNOWN,
            "reason": study.priority_reason,
            "label": _study_label(study),
            "scored": len(study.scored),
            "total": len(study.images),
            "positives": ", ".join(positives) or "none",
            "html": o.html.name if o and o.html else "#",
            "pdf": o.pdf.name if o and o.pdf else "",
        })
        for n, img in enumerate(study.images, start=1):
            if img.status != "scored":
                problems.append({"source": _image_source(study, img, n, deidentify), "status": img.status,
                                 "reason": img.reason or "no reason recorded"})
    priority_counts = Counter(s.priority or UNKNOWN for s in bundle.studies)
    order = list(dict.fromkeys(s.priority or UNKNOWN for s in bundle.studies))
    status_counts = Counter(i.status for i in bundle.images)
    page = html_writer.render_index_html(
        run_title=bundle.results_dir.name,
        disclaimer=DISCLAIMER,
        priority_counts=[(k, priority_counts[k]) for k in order],
        status_counts=[(f"images {k}", n) for k, n in sorted(status_counts.items())],
        studies=rows,
        problems=problems,
        report_errors=[e for o in outputs for e in o.errors],
        provenance=provenance(bundle),
        notes=list(bundle.notes) + notes + [n for o in outputs for n in o.notes],
        generated_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        version=__version__,
    )
    return _write(out_dir / "index.html", page)


def _algorithms(bundle: ResultsBundle) -> tuple[Any, Any, tuple[str, ...]]:
    """AlgorithmInfo of the classifier and of the segmenter, and the segmenter's label names."""
    from cxrtriage.report.dicom_common import AlgorithmInfo

    man, run = bundle.manifest, bundle.run
    first = next((i.row for i in bundle.images if i.row.get("model_name")), {})
    params: dict[str, str] = {"operating_point": bundle.operating_point}
    for img in bundle.images:
        for f in img.findings:
            if f.threshold is not None:
                params[f"threshold.{f.label}"] = f"{f.threshold:.4f} ({f.threshold_kind})"
    classifier = AlgorithmInfo(
        name=man.name if man else str(first.get("model_name") or run.model_name),
        version=man.version if man else str(first.get("model_version") or run.model_version),
        sha256=man.sha256 if man else str(first.get("model_sha256") or run.model_sha256),
        parameters=params,
        label_codes=dict(man.extra.get("label_codes", {})) if man else {},
    )
    names: tuple[str, ...] = run.segmenter_labels
    seg_name, seg_version, seg_sha = run.segmenter_name, run.segmenter_version, ""
    if seg_name:
        try:
            from cxrtriage.model.registry import resolve_manifest

            sm = resolve_manifest(seg_name)
            names = names or sm.labels
            seg_version = seg_version or sm.version
            seg_sha = sm.sha256
        except Exception as exc:  # the SEG still works with generic segment names
            log.info("segmenter manifest '%s' not found (%s); generic segment names are used", seg_name, exc)
    segmenter = AlgorithmInfo(name=seg_name or "lung segmenter (not recorded)", version=seg_version or UNKNOWN,
                              sha256=seg_sha)
    return classifier, segmenter, names


def write_study_dicom(study: StudyReport, bundle: ResultsBundle, pdf_bytes: bytes | None, out_dir: Path, *,
                      modality: str) -> tuple[list[Path], list[str], list[str]]:
    """SR + SC (+ SEG when a mask exists) per scored DICOM image, and one encapsulated PDF per study.

    Returns (files written, errors, notes on what was skipped or left out).
    """
    with warnings.catch_warnings():
        # highdicom warns about the source's own single-component person names; they are copied unchanged
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        return _write_study_dicom(study, bundle, pdf_bytes, out_dir, modality=modality)


def _write_study_dicom(study: StudyReport, bundle: ResultsBundle, pdf_bytes: bytes | None, out_dir: Path, *,
                       modality: str) -> tuple[list[Path], list[str], list[str]]:
    from cxrtriage.report import dicom_common, dicom_pdf, dicom_sc, dicom_sr
    from cxrtriage.report.capture import sc_picture

    classifier, segmenter, mask_names = _algorithms(bundle)
    written: list[Path] = []
    errors: list[str] = []
    notes: list[str] = []
    sources = []
    folder = out_dir / study.slug
    for n, img in enumerate(study.images, start=1):
        if not img.scored:
            continue
        if not img.is_dicom:
            notes.append(f"{study.slug} image {n}: not a DICOM input: no source study to add DICOM results to")
            continue
        try:
            source = dicom_common.read_source(img.path)
        except Exception as exc:
            errors.append(f"{study.slug} image {n}: {exc}")
            continue
        sources.append(source)
        steps: list[tuple[str, Any]] = [
            ("sr", lambda s=source, i=img: dicom_sr.build_sr(s, i.findings, classifier, lung_area_mm2=i.lung_area_mm2,
                                                            segmenter=segmenter)),
            ("sc", lambda s=source, i=img: _sc(s, i, bundle, classifier, mask_names, notes, dicom_sc, sc_picture)),
        ]
        if img.mask_path is not None:
            steps.append(("seg", lambda s=source, i=img: _seg(s, i, segmenter, mask_names)))
        for kind, build in steps:
            try:
                ds = build()
                written.append(dicom_common.save(ds, folder / f"{kind}_{n:03d}.dcm"))
            except Exception as exc:  # one object failing never stops the others
                errors.append(f"{study.slug} image {n}: DICOM {kind.upper()} not written ({type(exc).__name__}: {exc})")
    if sources and pdf_bytes is not None:
        try:
            ds = dicom_pdf.build_encapsulated_pdf(sources, pdf_bytes, classifier, modality=modality)
            written.append(dicom_common.save(ds, folder / "report_pdf.dcm"))
        except Exception as exc:
            errors.append(f"{study.slug}: encapsulated PDF not written ({type(exc).__name__}: {exc})")
    return written, errors, notes


def _sc(source: Any, img: ImageResult, bundle: ResultsBundle, algo: Any, mask_names: tuple[str, ...], notes: list[str],
        dicom_sc: Any, sc_picture: Any) -> Any:
    picture, left_out = sc_picture(img, bundle, mask_names)
    notes.extend(left_out)
    return dicom_sc.build_sc(source, picture, algo)


def _seg(source: Any, img: ImageResult, algo: Any, mask_names: tuple[str, ...]) -> Any:
    from cxrtriage.report import dicom_seg, imaging

    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("multi-frame source: a per-frame lung SEG is not supported")
    assert img.mask_path is not None
    mask = imaging.read_mask(img.mask_path, (int(source.Rows), int(source.Columns)))
    return dicom_seg.build_seg(source, mask, mask_names, algo)


def build_reports(
    results_dir: str | Path,
    *,
    deidentify: bool = False,
    pdf: bool = True,
    dicom: bool = False,
    send: Destination | None = None,
    modality: str = "DOC",
    model: str | Path | None = None,
    operating_point: str | None = None,
) -> ReportSummary:
    """Write ``DIR/report/<study>.html`` (+ ``.pdf``), ``DIR/report/index.html`` and, with ``dicom``,
    ``DIR/dicom/<study>/*.dcm`` (SR, SC, SEG per image; encapsulated PDF per study); then send them.

    A study that fails is listed in the index with its error; it never stops the others. ``deidentify``
    applies to the HTML/PDF reports; DICOM results always carry the source identity (they go back into
    the source study).
    """
    bundle = load_results(results_dir, model=model, operating_point=operating_point, deidentify_headers=deidentify)
    rdir = bundle.results_dir
    report_dir = rdir / "report"
    dicom_dir = rdir / "dicom"
    outputs: list[StudyOutput] = []
    notes: list[str] = []
    from cxrtriage.report.pdf import render_study_pdf

    for study in bundle.studies:
        errors: list[str] = []
        study_notes: list[str] = []
        html_path = pdf_path = None
        dicom_files: list[Path] = []
        try:
            view = study_view(study, bundle, deidentified=deidentify)
            html_path = _write(report_dir / f"{study.slug}.html", html_writer.render_study_html(view))
            pdf_bytes = render_study_pdf(view) if (pdf or dicom) else None
            if pdf and pdf_bytes is not None:
                pdf_path = _write(report_dir / f"{study.slug}.pdf", pdf_bytes)
            if dicom:
                dicom_pdf_bytes = pdf_bytes
                if deidentify:  # the PDF that goes into the patient's own study names the patient
                    ident = study_view(_reidentified(study, bundle), bundle, deidentified=False)
                    dicom_pdf_bytes = render_study_pdf(ident)
                dicom_files, dicom_errors, dicom_notes = write_study_dicom(study, bundle, dicom_pdf_bytes, dicom_dir,
                                                                           modality=modality)
                errors.extend(dicom_errors)
                study_notes.extend(dicom_notes)
        except Exception as exc:  # one study's failure is reported in the index, never fatal to the batch
            log.warning("%s: report failed (%s)", study.slug, type(exc).__name__)
            errors.append(f"{study.slug}: report failed ({type(exc).__name__}: {exc})")
        outputs.append(StudyOutput(key=study.key, slug=study.slug, html=html_path, pdf=pdf_path,
                                   dicom=tuple(dicom_files), errors=tuple(errors), notes=tuple(study_notes)))
    sent: list[SendResult] = []
    if send is not None:
        files = [p for o in outputs for p in o.dicom]
        if not dicom:
            notes.append("--send given without --dicom: nothing to send")
        else:
            from cxrtriage.report.send import send_files

            sent = send_files(files, send)
            failed = [r for r in sent if not r.ok]
            notes.append(f"sent {len(sent) - len(failed)}/{len(sent)} DICOM files to {send.host}:{send.port} ({send.called_aet})")
    index = write_index(bundle, outputs, report_dir, deidentify=deidentify, notes=notes)
    return ReportSummary(results_dir=rdir, index=index, studies=tuple(outputs), sent=tuple(sent),
                         notes=tuple(list(bundle.notes) + notes + [n for o in outputs for n in o.notes]))


def _reidentified(study: StudyReport, bundle: ResultsBundle) -> StudyReport:
    from dataclasses import replace

    from cxrtriage.report.study import read_header

    return replace(study, header=read_header(study.images, study.key))
