"""Write every report of a results directory: per-study HTML/PDF, the batch index, DICOM results, PACS send."""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Collection, MutableMapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from cxrtriage import __version__
from cxrtriage.files import atomic_write
from cxrtriage.model.registry import resolve_manifest
from cxrtriage.report import dicom_common, dicom_pdf, dicom_sc, dicom_seg, dicom_sr
from cxrtriage.report import html as html_writer
from cxrtriage.report.capture import sc_picture
from cxrtriage.report.dicom_common import AlgorithmInfo
from cxrtriage.report.folder import (
    INDEX_NAME,
    FolderRecord,
    clear_reports,
    other_entries,
    read_record,
    why_rewrite,
    write_record,
    writer_files,
)
from cxrtriage.report.header import UNKNOWN, PatientHeader, deidentify, study_slug
from cxrtriage.report.masks import read_mask
from cxrtriage.report.pdf import render_study_pdf
from cxrtriage.report.pseudonym import require_pseudonym_key
from cxrtriage.report.send import Destination, SendResult, send_files
from cxrtriage.report.sources import StudySources
from cxrtriage.report.study import ImageResult, InputNames, ResultsBundle, StudyReport, load_results
from cxrtriage.report.view import DISCLAIMER, provenance, study_view

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StudyOutput:
    """What was written for one study, and what could not be."""

    key: str
    slug: str
    label: str = ""  # what the index shows for the study (patient, date, description; or the slug)
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


def _study_label(study: StudyReport, h: PatientHeader) -> str:
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
    report_errors: list[str] = []
    study_notes: list[str] = []
    for study in bundle.studies:
        o = by_key.get(study.key)
        # De-identified: no text of the index names an input (reasons, errors and notes quote paths and file names).
        # Per study: a study's texts name only its own inputs, and a pattern per study stays small in large runs.
        names: Callable[[str], str] = InputNames.of([study], with_slug=True) if deidentify else str
        if o is not None:
            report_errors += [names(e) for e in o.errors]
            study_notes += [names(n) for n in o.notes]
        positives = sorted({f.label for i in study.scored for f in i.findings if f.positive})
        rows.append({
            "priority": study.priority or UNKNOWN,
            "reason": names(study.priority_reason),
            "label": o.label if o and o.label else study.slug,
            "scored": len(study.scored),
            "total": len(study.images),
            "positives": ", ".join(positives) or "none",
            "html": o.html.name if o and o.html else "#",
            "pdf": o.pdf.name if o and o.pdf else "",
        })
        for n, img in enumerate(study.images, start=1):
            if not img.scored:
                problems.append({"source": _image_source(study, img, n, deidentify), "status": img.status,
                                 "reason": names(img.reason) or "no reason recorded"})
    # A file that is no image (a README, a DICOM SR) is in no study, yet says here why it was not read; de-identified,
    # by a number only, as its reason may name another input ("pixel data file of <name>.mhd").
    not_images = [img for img in bundle.images if not img.record.in_study]
    for n, img in enumerate(not_images, start=1):
        problems.append({"source": f"file {n} (not an image)" if deidentify else str(img.path), "status": img.status,
                         "reason": "not an image" if deidentify else img.reason or "no reason recorded"})
    priority_counts = Counter(s.priority or UNKNOWN for s in bundle.studies)
    order = list(dict.fromkeys(s.priority or UNKNOWN for s in bundle.studies))
    status_counts = Counter(i.status for s in bundle.studies for i in s.images)
    page = html_writer.render_index_html(
        run_title="de-identified results" if deidentify else bundle.results_dir.name,
        disclaimer=DISCLAIMER,
        priority_counts=[(k, priority_counts[k]) for k in order],
        status_counts=[*((f"images {k}", n) for k, n in sorted(status_counts.items())),
                       *([("files that are not images", len(not_images))] if not_images else [])],
        studies=rows,
        problems=problems,
        report_errors=report_errors,
        provenance=provenance(bundle),
        notes=[*bundle.notes, *notes, *study_notes],  # the run's own notes name the model, never an input
        generated_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        version=__version__,
    )
    return atomic_write(out_dir / INDEX_NAME, page)


def _algorithms(bundle: ResultsBundle) -> tuple[AlgorithmInfo, AlgorithmInfo, tuple[str, ...]]:
    """AlgorithmInfo of the classifier and of the segmenter, and the segmenter's label names."""
    man, run = bundle.manifest, bundle.run
    params: dict[str, str] = {"operating_point": bundle.operating_point}
    if bundle.model.integrity:  # which manifest (thresholds, calibration, labels) decided, beside the ONNX sha256
        params["manifest_integrity"] = bundle.model.integrity
    for img in bundle.images:
        for f in img.findings:
            if f.threshold is not None:
                params[f"threshold.{f.label}"] = f"{f.threshold:.4f} ({f.threshold_kind})"
    classifier = AlgorithmInfo(
        name=bundle.model.name, version=bundle.model.version, sha256=bundle.model.sha256, parameters=params,
        label_codes=dict(man.extra.get("label_codes", {})) if man else {},
    )
    seg = run.segmenter if run is not None else None
    names: tuple[str, ...] = run.segmenter_labels if run is not None else ()
    seg_name, seg_version, seg_sha = (seg.name, seg.version, "") if seg is not None else ("", "", "")
    seg_integrity = seg.integrity if seg is not None else ""
    if seg_name:
        try:
            sm = resolve_manifest(seg_name)
            names = names or sm.labels
            seg_version = seg_version or sm.version
            seg_sha = sm.sha256
            seg_integrity = seg_integrity or sm.integrity
        except Exception as exc:  # the SEG still works with generic segment names
            log.info("segmenter manifest '%s' not found (%s); generic segment names are used", seg_name, exc)
    segmenter = AlgorithmInfo(name=seg_name or "lung segmenter (not recorded)", version=seg_version or UNKNOWN,
                              sha256=seg_sha,
                              parameters={"manifest_integrity": seg_integrity} if seg_integrity else {})
    return classifier, segmenter, names


def write_study_dicom(study: StudyReport, bundle: ResultsBundle, sources: StudySources, pdf_bytes: bytes | None,
                      out_dir: Path, *, modality: str,
                      only: Collection[str] | None = None) -> tuple[list[Path], list[str], list[str]]:
    """SR + SC (+ SEG when a mask exists) per scored DICOM image, and one encapsulated PDF per study.

    ``only``: the images (paths as the results name them) that get SR/SC/SEG now; the others got theirs before.
    Returns (files written, errors, notes on what was skipped or left out).
    """
    with warnings.catch_warnings():
        # highdicom warns about the source's own single-component person names; they are copied unchanged
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        return _write_study_dicom(study, bundle, sources, pdf_bytes, out_dir, modality=modality, only=only)


def _write_study_dicom(study: StudyReport, bundle: ResultsBundle, sources: StudySources, pdf_bytes: bytes | None,
                       out_dir: Path, *, modality: str,
                       only: Collection[str] | None) -> tuple[list[Path], list[str], list[str]]:
    classifier, segmenter, mask_names = _algorithms(bundle)
    written: list[Path] = []
    errors: list[str] = []
    notes: list[str] = []
    used: list[Dataset] = []
    folder = out_dir / study.slug
    for n, img in enumerate(study.images, start=1):
        if not img.scored:
            continue
        if not img.is_dicom:
            notes.append(f"{study.slug} image {n}: not a DICOM input: no source study to add DICOM results to")
            continue
        try:
            source = sources.source(img)
        except Exception as exc:
            errors.append(f"{study.slug} image {n}: {exc}")
            continue
        dropped = dicom_common.drop_invalid_values(source)
        if dropped:  # named by attribute only: the values themselves are patient data
            notes.append(f"{study.slug} image {n}: invalid source values left out of the DICOM results: "
                         + ", ".join(dropped))
        used.append(source)
        if only is not None and img.record.path not in only:
            continue  # its SR/SC/SEG were written (and sent) with the batch it came in
        steps: list[tuple[str, Callable[[], Dataset]]] = [
            ("sr", partial(dicom_sr.build_sr, source, img.findings, classifier, lung_area_mm2=img.record.lung_area_mm2,
                           segmenter=segmenter, priority=img.priority, priority_reason=img.priority_reason,
                           instance_number=n)),
            ("sc", partial(_sc, source, img, bundle, sources, classifier, mask_names, notes, n)),
        ]
        if img.mask_path is not None:
            steps.append(("seg", partial(_seg, source, img, segmenter, mask_names, n)))
        for kind, build in steps:
            try:
                written.append(dicom_common.save(build(), folder / f"{kind}_{n:03d}.dcm"))
            except Exception as exc:  # one object failing never stops the others
                errors.append(f"{study.slug} image {n}: DICOM {kind.upper()} not written ({dicom_common.describe_error(exc)})")
    if used and pdf_bytes is not None:
        try:
            ds = dicom_pdf.build_encapsulated_pdf(used, pdf_bytes, classifier, modality=modality)
            written.append(dicom_common.save(ds, folder / "report_pdf.dcm"))
        except Exception as exc:
            errors.append(f"{study.slug}: encapsulated PDF not written ({dicom_common.describe_error(exc)})")
    return written, errors, notes


def _sc(source: Dataset, img: ImageResult, bundle: ResultsBundle, sources: StudySources, algo: AlgorithmInfo,
        mask_names: tuple[str, ...], notes: list[str], n: int) -> Dataset:
    picture, left_out = sc_picture(img, bundle, sources, mask_names)
    notes.extend(left_out)
    return dicom_sc.build_sc(source, picture, algo, instance_number=n)


def _seg(source: Dataset, img: ImageResult, algo: AlgorithmInfo, mask_names: tuple[str, ...], n: int) -> Dataset:
    if int(source.get("NumberOfFrames", 1) or 1) > 1:
        raise ValueError("multi-frame source: a per-frame lung SEG is not supported")
    assert img.mask_path is not None
    mask = read_mask(img.mask_path, (int(source.Rows), int(source.Columns)))
    return dicom_seg.build_seg(source, mask, mask_names, algo, instance_number=n)


def _earlier_output(study: StudyReport, report_dir: Path, label: str | None) -> StudyOutput:
    """A study whose reports an earlier call wrote (``build_reports(only=...)``): the index links to them."""
    html, pdf = report_dir / f"{study.slug}.html", report_dir / f"{study.slug}.pdf"
    return StudyOutput(key=study.key, slug=study.slug, label=label or study.slug, html=html if html.is_file() else None,
                       pdf=pdf if pdf.is_file() else None)


def _study_output(study: StudyReport, bundle: ResultsBundle, report_dir: Path, dicom_dir: Path, *, deidentified: bool,
                  pdf: bool, dicom: bool, modality: str, only: Collection[str] | None = None) -> StudyOutput:
    """Everything written for one study; a failure is recorded in the output, never raised."""
    errors: list[str] = []
    notes: list[str] = []
    html_path = pdf_path = None
    dicom_files: list[Path] = []
    sources = StudySources(study)  # each source file of the study is read once, for every output below
    header = sources.header()
    shown = deidentify(header, study.key) if deidentified else header
    try:
        view = study_view(study, bundle, sources, shown, deidentified=deidentified)
        for fig in (f for image in view.images for f in image.figures):  # the pictures the page references
            atomic_write(report_dir / fig.file, fig.data)
        html_path = atomic_write(report_dir / f"{study.slug}.html", html_writer.render_study_html(view))
        pdf_bytes = render_study_pdf(view) if (pdf or dicom) else None
        if pdf and pdf_bytes is not None:
            pdf_path = atomic_write(report_dir / f"{study.slug}.pdf", pdf_bytes)
        if dicom:
            if deidentified:  # the PDF that goes into the patient's own study names the patient
                pdf_bytes = render_study_pdf(study_view(study, bundle, sources, header, deidentified=False))
            dicom_files, dicom_errors, dicom_notes = write_study_dicom(study, bundle, sources, pdf_bytes, dicom_dir,
                                                                       modality=modality, only=only)
            errors.extend(dicom_errors)
            notes.extend(dicom_notes)
    except Exception as exc:  # one study's failure is reported in the index, never fatal to the batch
        # and said once, by whoever shows the summary's errors (the CLI, the node's log): not logged here too
        errors.append(f"{study.slug}: report failed ({type(exc).__name__}: {exc})")
    return StudyOutput(key=study.key, slug=study.slug, label=_study_label(study, shown), html=html_path, pdf=pdf_path,
                       dicom=tuple(dicom_files), errors=tuple(errors), notes=tuple(notes))


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
    only: Collection[str] | None = None,
    labels: MutableMapping[str, str] | None = None,
) -> ReportSummary:
    """Write ``DIR/report/<study>.html`` (+ ``.pdf``), ``DIR/report/index.html`` and, with ``dicom``,
    ``DIR/dicom/<study>/*.dcm`` (SR, SC, SEG per image; encapsulated PDF per study); then send them.

    A study that fails is listed in the index with its error; it never stops the others. ``deidentify``
    applies to the HTML/PDF reports and the index (pseudonyms, no dates, accession or description, inputs named
    "image N"); DICOM results always carry the source identity (they go back into the source study), and the
    results tables keep the paths. See the README, "De-identification".

    A full call (``only`` None: ``report``, ``predict --report``) first removes every file the writer wrote into
    ``report/`` before (pages, PDFs, pictures, the index: `cxrtriage.report.folder`), so that the folder holds this
    call's reports only; a file of another name there stays.

    ``only`` (``serve``, ``watch``): the images new since the previous call, by their path in the results. Only their
    studies get their HTML/PDF written again, only these images get new SR/SC/SEG (each study its encapsulated PDF
    anew), and the summary lists only the files written now; the other studies keep what earlier calls wrote, unless
    ``report/`` holds them with another setting (`cxrtriage.report.folder.why_rewrite`): then every study's HTML/PDF
    is written anew (DICOM results still for the new images only), and the index says why.
    ``labels``: the index label of each study, kept by the caller across calls so that the sources of the studies
    not written again need not be read again for the index.

    Raises:
        ConfigError: ``deidentify`` without a usable ``CXRTRIAGE_PSEUDONYM_KEY`` (nothing is written).
        OutputError: an earlier report cannot be removed (nothing new is written).
    """
    if deidentify:
        require_pseudonym_key()  # refuse before any work: pseudonyms under a public key are reversible
    bundle = load_results(results_dir, model=model, operating_point=operating_point, deidentified=deidentify)
    rdir = bundle.results_dir
    report_dir = rdir / "report"
    record = read_record(report_dir)
    # The slugs the writer's files may carry that are not pseudonyms (those are known by their form): the studies named
    # as an identified run names them, so that a de-identified run finds the identified pages, and the record's.
    ours = {study_slug(s.key, deidentified=False) for s in bundle.studies} | (record.studies if record else set())
    notes: list[str] = []
    if only is None:
        rewrite = True
    else:
        # An incremental call keeps the pages of earlier studies and links to them, which is safe only when they were
        # written as this call writes: a node restarted with(out) --deidentify or under another key, or a
        # `cxrtriage report` run on its folder in between, leaves pages of the other kind, and adding to them would
        # leave identified pages in a folder whose index says "de-identified" (or link to none of them). Writing
        # every page again costs one batch once; refusing would stop the node's reports until someone cleans up.
        has_reports = record is None and bool(writer_files(report_dir, ours))  # a record answers without a listing
        why = why_rewrite(record, has_reports=has_reports, deidentified=deidentify,
                          slugs={s.slug for s in bundle.studies})
        rewrite = why is not None
        if why is not None:
            notes.append(why)
    written: set[str] = set() if rewrite or record is None else set(record.studies)
    if rewrite:  # before anything new: a run cut short must leave no earlier page beside its own
        removed = clear_reports(report_dir, ours)
        if removed:
            log.info("%s: %d file(s) of earlier reports removed", report_dir, len(removed))
        others = other_entries(report_dir, ours) if deidentify else []
        if others:  # they are shared with the folder, and no run can tell whether they name a patient
            log.warning("%s: holds %d file(s) or folder(s) that cxrtriage did not write (%s); they are left as they "
                        "are and go with the folder when it is shared: move them out if they may name a patient",
                        report_dir, len(others), ", ".join(p.name for p in others[:3]) + (", ..." if len(others) > 3 else ""))
    outputs: list[StudyOutput] = []
    for study in bundle.studies:
        new = only is None or any(img.record.path in only for img in study.images)
        if not (new or rewrite):
            outputs.append(_earlier_output(study, report_dir, labels.get(study.key) if labels is not None else None))
            continue
        out = _study_output(study, bundle, report_dir, rdir / "dicom", deidentified=deidentify, pdf=pdf,
                            dicom=dicom and new, modality=modality, only=only)
        if labels is not None:
            labels[study.key] = out.label
        outputs.append(out)
        written.add(study.slug)
    sent: list[SendResult] = []
    if send is not None:
        if not dicom:
            notes.append("--send given without --dicom: nothing to send")
        else:
            sent = send_files([p for o in outputs for p in o.dicom], send)
            failed = [r for r in sent if not r.ok]
            notes.append(f"sent {len(sent) - len(failed)}/{len(sent)} DICOM files to {send.host}:{send.port} ({send.called_aet})")
    index = write_index(bundle, outputs, report_dir, deidentify=deidentify, notes=notes)
    write_record(report_dir, FolderRecord(deidentify, frozenset(written)))  # last: it vouches for what is there
    return ReportSummary(results_dir=rdir, index=index, studies=tuple(outputs), sent=tuple(sent),
                         notes=tuple(list(bundle.notes) + notes + [n for o in outputs for n in o.notes]))
