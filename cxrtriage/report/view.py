"""What a study report says, computed once and rendered by both the HTML and the PDF writers."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cxrtriage import __version__
from cxrtriage.explain.gating import SHORTCUT_LEVEL
from cxrtriage.explain.overlay import REPORTED_ONLY
from cxrtriage.report import imaging
from cxrtriage.report.header import UNKNOWN, PatientHeader
from cxrtriage.report.masks import read_mask
from cxrtriage.report.sources import StudySources
from cxrtriage.report.study import Finding, Heatmap, ImageResult, InputNames, ResultsBundle, StudyReport
from cxrtriage.results import RunRecord

log = logging.getLogger(__name__)

DISCLAIMER = (
    "Decision support only; not a diagnosis; a qualified clinician must review the images. "
    "Scores are model outputs with known error rates at the stated operating points, not findings."
)
DEIDENTIFIED_NOTE = (
    "De-identified: names, IDs and UIDs are replaced by stable pseudonyms; dates, accession number and study "
    "description are removed; inputs are named 'image N'. Pictures are shown as they are (text burned into the "
    "pixels stays)."
)
# A figure is shown at half the page width in the HTML (~600 px) and 58 mm wide in the PDF (~280 dpi at 640 px):
# one 640 px JPEG file per figure serves both, written once beside the HTML and embedded once in the PDF.
FIGURE_MAX_SIDE = 640
FIGURE_QUALITY = 85
_KIND_TEXT = {
    "rule_out": "rule-out (high sensitivity)",
    "balanced": "balanced (Youden)",
    "run": "set for this run",
    UNKNOWN: "unknown",
}


@dataclass(frozen=True, slots=True)
class Figure:
    """A picture for a report: JPEG bytes with its pixel size, and the file it is written to beside the HTML
    (``file``, a name inside the report folder; the HTML references it, the PDF embeds ``data``)."""

    caption: str
    data: bytes
    width: int
    height: int
    file: str
    mime: str = "image/jpeg"

    @property
    def data_uri(self) -> str:
        return imaging.data_uri(self.data, self.mime)


@dataclass(frozen=True, slots=True)
class FindingRow:
    label: str
    score: str
    threshold: str
    kind: str
    status: str  # "above" / "below" / "not scored"
    sensitivity: str
    specificity: str
    role: str = ""  # "decides" / "reported only: not validated for the adult population" / "" (not recorded)
    population_auroc: str = ""  # "0.891 (0.812-0.956; 41 pos / 188 neg, adult)", or why there is none; "" unknown
    population_auroc_short: str = ""  # "0.891 (0.81-0.96)" for the PDF's narrow column
    population: str = ""  # the patient's population the AUROC is for

    @property
    def positive(self) -> bool:
        return self.status == "above"

    @property
    def reported_only(self) -> bool:
        return self.role.startswith(REPORTED_ONLY)


@dataclass(frozen=True, slots=True)
class ImageView:
    title: str
    source: str
    status: str
    reason: str
    priority: str
    priority_reason: str
    figures: tuple[Figure, ...]
    findings: tuple[FindingRow, ...]
    measurements: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    shortcut: str = ""  # "possible shortcut" note: a map's evidence lay mostly outside the lungs


@dataclass(frozen=True, slots=True)
class StudyView:
    title: str
    slug: str
    header: tuple[tuple[str, str], ...]
    priority: str
    priority_reason: str
    images: tuple[ImageView, ...]
    model: tuple[tuple[str, str], ...]
    metrics: tuple[tuple[str, str], ...]
    provenance: tuple[tuple[str, str], ...]
    notes: tuple[str, ...]
    disclaimer: str
    generated_at: str
    deidentified: bool
    threshold_note: str = ""  # how the thresholds in the findings tables relate to the priority (study mode)


def _pct(v: float | None) -> str:
    return "not validated" if v is None else f"{100 * v:.1f} %"


def finding_row(f: Finding) -> FindingRow:
    pos = f.positive
    return FindingRow(
        label=f.label,
        score="not scored" if f.score is None else f"{f.score:.3f}",
        threshold=UNKNOWN if f.threshold is None else f"{f.threshold:.3f}",
        kind=_KIND_TEXT.get(f.threshold_kind, f.threshold_kind),
        status="not scored" if f.score is None else (UNKNOWN if pos is None else ("above" if pos else "below")),
        sensitivity=_pct(f.sensitivity),
        specificity=_pct(f.specificity),
        role=finding_role(f),
        population_auroc=population_auroc(f),
        population_auroc_short=_short_auroc(f),
        population=f.population or "",
    )


def _short_auroc(f: Finding) -> str:
    v = f.population_validation
    if v is None or f.population is None:
        return ""
    if v.auroc is None:
        return "not measured"
    return f"{v.auroc:.3f}" + (f" ({v.ci95[0]:.2f}-{v.ci95[1]:.2f})" if v.ci95 else "")


def population_auroc(f: Finding) -> str:
    """The finding's held-out AUROC on the patient's population, with its 95% CI and numbers, in words."""
    v, pop = f.population_validation, f.population
    if v is None or pop is None:
        return ""
    if v.auroc is None:
        return f"not measured for {pop}" + (f" ({v.note})" if v.note else "")
    ci = f" ({v.ci95[0]:.3f}-{v.ci95[1]:.3f}" if v.ci95 else " ("
    return f"{v.auroc:.3f}{ci}; {v.n_pos} pos / {v.n_neg} neg, {pop})"


def finding_role(f: Finding) -> str:
    """What a finding may do to the priority, in words ("" when the run did not record it)."""
    if f.decides is None:
        return ""
    return "decides" if f.decides else f"{REPORTED_ONLY}: not validated for the {f.population} population"


def flatten_metrics(metrics: Any, prefix: str = "", limit: int = 24) -> list[tuple[str, str]]:
    """Numeric leaves of the manifest's ``metrics`` as ("a.b.c", "0.912") pairs, at most ``limit``."""
    out: list[tuple[str, str]] = []

    def walk(v: Any, key: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(v, dict):
            for k, sub in v.items():
                walk(sub, f"{key}.{k}" if key else str(k))
        elif isinstance(v, bool):
            return
        elif isinstance(v, int | float):
            out.append((key, f"{v:.3f}" if isinstance(v, float) else str(v)))
        elif isinstance(v, str) and len(v) <= 80:
            out.append((key, v))

    walk(metrics, prefix)
    return out


def _primary_heatmap_first(img: ImageResult) -> list[Any]:
    order = {f.label: (not bool(f.positive), -(f.score or 0.0)) for f in img.findings}
    return sorted(img.heatmaps, key=lambda h: order.get(h.label, (True, 0.0)))


def _figure(caption: str, rgb: imaging.U8, file: str) -> Figure:
    return Figure(caption, imaging.jpeg_bytes(rgb, FIGURE_QUALITY), width=int(rgb.shape[1]), height=int(rgb.shape[0]),
                  file=file)


def heatmap_caption(hm: Heatmap, level: float = SHORTCUT_LEVEL, finding: Finding | None = None, *,
                    colour_bar: bool = False) -> str:
    """A map figure's caption: what the map is, the finding's score against its threshold, how much of the evidence
    lies outside the lungs, and (``colour_bar``: the figure drawn from the map itself) how to read the bar."""
    method = f" ({hm.method})" if hm.method else ""
    score = ""
    if finding is not None and finding.score is not None:
        score = f", score {finding.score:.3f}"
        if finding.threshold is not None:
            score += f" {'>=' if finding.score >= finding.threshold else '<'} threshold {finding.threshold:.3f}"
        if finding.reported_only:  # as the overlay and the findings table say: no verdict for this population
            who = f" for the {finding.population} population" if finding.population else ""
            score += f" ({REPORTED_ONLY}: not validated{who}, it does not move the priority)"
    text = f"Explanation map{method} for '{hm.label}'{score}: where the model's evidence was, not a lesion outline"
    if hm.outside_lungs is not None:
        text += f"; {100 * hm.outside_lungs:.0f}% of it outside the lung fields (lungs and mediastinum)"
        if hm.outside_lungs >= level:
            text += " - POSSIBLE SHORTCUT: the model may be using something other than the lungs"
    if colour_bar:
        text += (f". Bar at the right: relative evidence, 0 at the bottom (blue) to 1 at the top (red); the map is not "
                 f"drawn below {imaging.MAP_FLOOR:g}")
    return text


def _map_picture(base: imaging.U8, hm: Heatmap, mask: imaging.U8 | None, max_side: int) -> imaging.U8:
    """The source picture with the map blended in from its ``.npy`` (colour map and floor as the explain overlays),
    the lung outline and a colour bar: drawn at the size the report shows, so that nothing in it is shrunk text.
    Why not predict's overlay picture: its text band and two panels, fitted into a report column, came out as 7 px
    type; here the caption carries the words."""
    assert hm.map_path is not None
    rgb = imaging.heat_blend(base, imaging.read_map(hm.map_path, base.shape), floor=imaging.MAP_FLOOR)
    if mask is not None:
        rgb = imaging.draw_mask_outline(rgb, mask)
    return imaging.fit(imaging.with_colour_bar(rgb, floor=imaging.MAP_FLOOR), max_side)


def image_figures(img: ImageResult, sources: StudySources, *, max_side: int = FIGURE_MAX_SIDE,
                  stem: str = "figure", shortcut_level: float = SHORTCUT_LEVEL,
                  ) -> tuple[tuple[Figure, ...], tuple[str, ...]]:
    """The source image (with the lung outline when a mask exists) and each map: drawn from its ``.npy`` on the
    source image (`_map_picture`), else predict's overlay picture as it is; plus problems met.

    Figure ``k`` (from 1) is to be written as ``<stem>-<k>.jpg``.
    """
    problems: list[str] = []
    try:
        base = sources.picture(img)
    except Exception as exc:
        return (), (f"image not shown: {exc}",)
    small = imaging.fit(base, max_side)
    rgb = imaging.to_rgb(base)
    caption = "Source image"
    mask: imaging.U8 | None = None
    if img.mask_path is not None:
        try:
            mask = read_mask(img.mask_path, small.shape)
            rgb = imaging.draw_mask_outline(rgb, read_mask(img.mask_path, base.shape))
            caption = "Source image with the lung segmentation outline"
        except Exception as exc:
            problems.append(f"lung mask not shown: {exc}")
    figures = [_figure(caption, imaging.fit(rgb, max_side), f"{stem}-1.jpg")]
    findings = {f.label: f for f in img.findings}
    for hm in _primary_heatmap_first(img):
        file = f"{stem}-{len(figures) + 1}.jpg"
        if hm.map_path is not None:
            try:
                picture = _map_picture(small, hm, mask, max_side)
            except Exception as exc:
                problems.append(f"map for {hm.label} drawn by predict instead: {exc}")
            else:
                caption = heatmap_caption(hm, shortcut_level, findings.get(hm.label), colour_bar=True)
                figures.append(_figure(caption, picture, file))
                continue
        try:
            ov = imaging.read_png_rgb(hm.path)
        except Exception as exc:
            problems.append(f"overlay for {hm.label} not shown: {exc}")
            continue
        figures.append(_figure(heatmap_caption(hm, shortcut_level, findings.get(hm.label)), imaging.fit(ov, max_side),
                               file))
    return tuple(figures), tuple(problems)


def _keep(text: str) -> str:
    return text


def image_view(img: ImageResult, number: int, sources: StudySources, *, deidentified: bool,
               names: Callable[[str], str] = _keep, slug: str = "study",
               shortcut_level: float = SHORTCUT_LEVEL) -> ImageView:
    """What the report shows of one image; ``names`` rewrites its texts (``InputNames`` when de-identified).

    Its figures are named ``<slug>-image<number>-<k>.jpg`` (the slug is pseudonymous when de-identified).
    """
    figures, problems = (image_figures(img, sources, stem=f"{slug}-image{number}", shortcut_level=shortcut_level)
                         if img.path.exists()
                         else ((), ("source image file not found",)))
    meas: list[tuple[str, str]] = []
    r = img.record
    if r.lung_area_mm2 is not None:
        meas.append(("Lung area", f"{r.lung_area_mm2:,.0f} mm² ({r.lung_area_mm2 / 100:,.1f} cm²)"))
    elif r.lung_area_px is not None:
        meas.append(("Lung area", f"{r.lung_area_px:,.0f} pixels (pixel spacing unknown: no physical area)"))
    if img.mask_path is None and img.scored:
        meas.append(("Lung segmentation", "not available for this image"))
    view = r.view or "view unknown"
    return ImageView(
        title=f"Image {number} ({view})",
        source=f"image {number}" if deidentified else str(img.path),
        status=img.status,
        reason=names(img.reason),
        priority=img.priority,
        priority_reason=names(img.priority_reason),
        figures=figures,
        findings=tuple(finding_row(f) for f in img.findings),
        measurements=tuple(meas),
        notes=tuple(names(n) for n in img.notes + problems),
        shortcut=img.shortcut,
    )


def model_summary(bundle: ResultsBundle) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    m = bundle.manifest
    name, version, sha = bundle.model.name, bundle.model.version, bundle.model.sha256
    fields = [
        ("Model", name or UNKNOWN),
        ("Version", version or UNKNOWN),
        ("SHA-256", (sha[:12] + "…") if sha and sha != UNKNOWN else UNKNOWN),
        ("Operating point", f"{_KIND_TEXT.get(bundle.operating_point, bundle.operating_point)} "
                            f"({bundle.operating_point_source})"),
        ("Intended use", (m.intended_use if m else "") or UNKNOWN),
        ("Training data", (m.training_data if m else "") or UNKNOWN),
        ("Model card", str(m.model_card) if m and m.model_card else UNKNOWN),
    ]
    metrics = tuple(flatten_metrics(m.metrics)) if m else ()
    return tuple(fields), metrics


def provenance(bundle: ResultsBundle) -> tuple[tuple[str, str], ...]:
    run = bundle.run
    in_force = {lab: run.threshold_in_force(lab) for lab in run.thresholds} if run is not None else {}
    thr = ", ".join(f"{k}={v:.3f}" for k, v in sorted(in_force.items()) if v is not None) or (
        f"manifest '{bundle.operating_point}' thresholds" if bundle.manifest else UNKNOWN)
    model = run.model if run is not None else None
    return (
        ("cxrtriage version (predict)", (run.tool_version if run else "") or UNKNOWN),
        ("cxrtriage version (report)", __version__),
        ("Model", f"{model.name} {model.version}".strip() if model else f"{UNKNOWN} {UNKNOWN}"),
        ("Model SHA-256", (model.sha256 if model else "") or UNKNOWN),
        ("Thresholds", thr),
        ("Triage policy", (run.policy_name if run else "") or UNKNOWN),
        ("Run started", (run.started_at if run else "") or UNKNOWN),
        ("Run finished", (run.finished_at if run else "") or UNKNOWN),
    )


def study_view(study: StudyReport, bundle: ResultsBundle, sources: StudySources, patient: PatientHeader, *,
               deidentified: bool) -> StudyView:
    h = patient
    header = (
        ("Patient name", h.patient_name),
        ("Patient ID", h.patient_id),
        ("Birth date", h.birth_date),
        ("Sex", h.sex),
        ("Study date", h.study_date),
        ("Accession number", h.accession),
        ("Study description", h.description),
        ("Study Instance UID", h.study_uid),
    )
    model, metrics = model_summary(bundle)
    # De-identified: no text names an input (the priority reason names the deciding file, a failure its path).
    names: Callable[[str], str] = InputNames.of([study]) if deidentified else _keep
    return StudyView(
        title="Chest X-ray decision-support report",
        slug=study.slug,
        header=header,
        priority=study.priority or UNKNOWN,
        priority_reason=names(study.priority_reason) or ("no priority recorded" if not study.priority else ""),
        images=tuple(image_view(img, n, sources, deidentified=deidentified, names=names, slug=study.slug,
                                shortcut_level=bundle.shortcut_level) for n, img in enumerate(study.images, start=1)),
        model=model,
        metrics=metrics,
        provenance=provenance(bundle),
        notes=tuple(names(n) for n in bundle.notes),
        disclaimer=DISCLAIMER,
        generated_at=dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat(),
        deidentified=deidentified,
        threshold_note=threshold_note(bundle.run),
    )


STUDY_MODE_NOTE = ("Each threshold in the findings tables is the finding's own operating point. The priority is decided "
                   "on the study: per tier, the highest score among its deciding findings against the tier's "
                   "study-level threshold for the patient's population, which the priority line names.")


def threshold_note(run: RunRecord | None) -> str:
    """`STUDY_MODE_NOTE` when the run decided priorities with study-level thresholds, else ""."""
    sop = run.sections.get("study_operating_points") if run is not None else None
    return STUDY_MODE_NOTE if isinstance(sop, Mapping) and sop.get("mode") == "study" else ""
