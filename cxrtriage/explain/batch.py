"""Explain a batch of files: overlays and raw maps per (image, finding, method), optional faithfulness, explain.csv."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, CxrTriageError, InputError, OutputError
from cxrtriage.explain.api import explain_input, flagged_labels, random_heatmap
from cxrtriage.explain.base import Heatmap, label_index
from cxrtriage.explain.faithfulness import deletion_insertion
from cxrtriage.explain.gating import gate_heatmap, is_shortcut, lung_fields, outside_share, share_note
from cxrtriage.explain.overlay import heatmap_filename, overlay_text, reported_only_note, save_heatmap
from cxrtriage.explain.registry import METHODS, get_method, method_availability, require_method
from cxrtriage.files import StemRegistry, atomic_output
from cxrtriage.io import DEFAULT_RULES, Probe, SelectionRules, assess, load_rules
from cxrtriage.io.discover import discover
from cxrtriage.model import Classifier, Segmenter, load_classifier, load_segmenter
from cxrtriage.outdir import check_out_is_not_an_input, lock_output
from cxrtriage.preprocess import ModelInput
from cxrtriage.results import SafeCsvWriter, Status, clean_text
from cxrtriage.triage import TriagePolicy, choose_population, counts_for, load_policy
from cxrtriage.types import Image2D

log = logging.getLogger(__name__)

CSV_NAME = "explain.csv"
OPERATING_POINTS = ("balanced", "rule_out")
# Row statuses: a map was written / the method found no positive evidence / no finding reached its
# threshold (--flagged) / the file could not be explained / the selection rules left it out (as predict does).
MAP, NO_MAP, NOTHING_FLAGGED, FAILED, EXCLUDED = "map", "no_map", "nothing_flagged", "failed", "excluded"


@dataclass(frozen=True, slots=True)
class ExplainConfig:
    """One ``cxrtriage explain`` run; every field is one command-line option.

    ``methods``: method names, or ``("all",)`` for every method this model supports. Give ``labels``
    (findings to explain) or ``flagged`` (every finding at or above its ``operating_point`` threshold),
    not both.
    """

    inputs: tuple[Path, ...]
    out: Path
    methods: tuple[str, ...] = ("gradcam",)
    labels: tuple[str, ...] = ()
    flagged: bool = False
    operating_point: str = "balanced"
    model: str | Path | None = None
    lung_mask: bool = False  # segment the lungs: share of each map's evidence outside them, outline on the overlay
    gate: bool = False  # also gate the maps by the dilated lung mask (implies lung_mask)
    segmenter: str | Path | None = None
    evaluate: bool = False
    steps: int = 24
    scorecam_top_k: int | None = None
    occlusion_patch: int | None = None
    occlusion_stride: int | None = None
    max_side: int = 1024
    device: str = "auto"
    # as in predict: which files are explained (a lateral view or a non-chest image is excluded), and whose validated
    # findings decide (a map of a finding not validated for the patient's population says "reported only")
    rules: Path | None = None
    policy: Path | None = None
    population: str | None = None

    def __post_init__(self) -> None:
        if bool(self.labels) == self.flagged:
            raise ConfigError("give either --label L (one or more) or --flagged, not both and not neither")
        if self.operating_point not in OPERATING_POINTS:
            raise ConfigError(f"--operating-point must be 'balanced' or 'rule_out', got '{self.operating_point}'")
        if not self.methods:
            raise ConfigError("give at least one --method (or --method all)")
        if self.steps < 2:
            raise ConfigError(f"--steps must be at least 2, got {self.steps}")

    @property
    def method_options(self) -> dict[str, dict[str, Any]]:
        """Keyword options per method, for the methods that have some set."""
        options: dict[str, dict[str, Any]] = {"scorecam": {}, "occlusion": {}}
        if self.scorecam_top_k is not None:
            options["scorecam"]["top_k"] = self.scorecam_top_k
        if self.occlusion_patch is not None:
            options["occlusion"]["patch"] = self.occlusion_patch
        if self.occlusion_stride is not None:
            options["occlusion"]["stride"] = self.occlusion_stride
        return {k: v for k, v in options.items() if v and k in METHODS}


@dataclass(frozen=True, slots=True)
class Faithfulness:
    """Deletion/insertion AUC of one map, of the same map ranked coldest first, and of a random ranking."""

    deletion_auc: float
    insertion_auc: float
    deletion_auc_reversed: float
    insertion_auc_reversed: float
    deletion_auc_random: float
    insertion_auc_random: float


@dataclass(frozen=True, slots=True)
class ExplainRow:
    """One row of explain.csv: one (image, finding, method), or one image with no finding or that failed."""

    path: str
    status: str
    reason: str = ""
    label: str = ""
    method: str = ""
    score: float | None = None
    threshold: float | None = None
    operating_point: str = ""
    flagged: bool | None = None
    png: str = ""  # file names inside the output folder
    npy: str = ""
    outside_lungs: float | None = None  # share of the map's evidence outside the lung fields (with a lung mask)
    shortcut: bool | None = None  # outside_lungs at or above the shortcut level
    faithfulness: Faithfulness | None = None
    population: str = ""  # whose validated findings decide ("" when the model defines no populations)
    decides: bool | None = None  # may this finding move a priority for that population (False: reported only)
    model_name: str = ""
    model_version: str = ""
    model_sha256: str = ""
    model_integrity: str = ""

    def __post_init__(self) -> None:
        # A reason quotes data (exception messages, DICOM values): no control character reaches explain.csv.
        object.__setattr__(self, "reason", clean_text(self.reason))

    def csv_row(self) -> dict[str, str]:
        """The row as explain.csv writes it (numbers with 4 decimals, missing values empty)."""
        row = {
            "path": self.path, "label": self.label, "method": self.method, "status": self.status, "reason": self.reason,
            "score": _fmt(self.score), "threshold": _fmt(self.threshold), "operating_point": self.operating_point,
            "flagged": "" if self.flagged is None else str(self.flagged).lower(), "png": self.png, "npy": self.npy,
            "outside_lungs": _fmt(self.outside_lungs), "shortcut": "" if self.shortcut is None else str(self.shortcut).lower(),
        }
        f = self.faithfulness
        for name in FAITHFULNESS_FIELDS:
            row[name] = "" if f is None else _fmt(getattr(f, name))
        row |= {"model_name": self.model_name, "model_version": self.model_version, "model_sha256": self.model_sha256,
                "model_integrity": self.model_integrity, "population": self.population,
                "decides": "" if self.decides is None else str(self.decides).lower()}
        return row


FAITHFULNESS_FIELDS = tuple(f.name for f in fields(Faithfulness))
CSV_FIELDS = (
    "path", "label", "method", "status", "reason", "score", "threshold", "operating_point", "flagged", "png", "npy",
    "outside_lungs", "shortcut", *FAITHFULNESS_FIELDS, "model_name", "model_version", "model_sha256", "model_integrity",
    "population", "decides",
)


@dataclass(frozen=True, slots=True)
class ExplainedFile:
    """What one input file gave: its rows, and a warning in plain words when it failed."""

    path: Path
    stem: str
    rows: tuple[ExplainRow, ...]
    warning: str = ""


@dataclass(frozen=True, slots=True)
class ExplainSummary:
    """The outcome of ``run_explain``: every row (as in explain.csv), counts and warnings."""

    rows: tuple[ExplainRow, ...]
    n_files: int
    out: Path
    csv_path: Path
    methods: tuple[str, ...]
    notes: tuple[str, ...] = ()  # about the run, e.g. a method skipped because this model cannot use it
    file_warnings: tuple[str, ...] = ()  # one per failed file: "path: reason"

    @property
    def n_maps(self) -> int:
        return sum(r.status == MAP for r in self.rows)

    @property
    def n_failed(self) -> int:
        return len(self.file_warnings)

    @property
    def all_failed(self) -> bool:
        return self.n_failed == self.n_files


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every file of the run shares: the models, the resolved methods, findings and options."""

    clf: Classifier
    segmenter: Segmenter | None
    methods: tuple[str, ...]
    labels: tuple[str, ...] | None  # None: the flagged findings of each image
    options: dict[str, dict[str, Any]]
    rules: SelectionRules = DEFAULT_RULES
    policy: TriagePolicy | None = None  # None: the model defines no populations (every finding decides)


def _fmt(v: float | None, digits: int = 4) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _plan(config: ExplainConfig) -> tuple[_Plan, list[str]]:
    """Load the models and resolve methods and findings; also returns notes about skipped methods."""
    clf = load_classifier(config.model, device=config.device)
    notes: list[str] = []
    if [m.lower() for m in config.methods] == ["all"]:
        avail = method_availability(clf.manifest)
        methods = [n for n, reason in avail.items() if not reason]
        notes += [f"method '{n}' skipped: {reason}" for n, reason in avail.items() if reason]
    else:
        methods = [require_method(m, clf.manifest).name for m in config.methods]
    labels = tuple(clf.labels[label_index(clf.labels, lab)] for lab in config.labels) if config.labels else None
    segmenter = (load_segmenter(config.segmenter, device=config.device, option="--segmenter")
                 if config.lung_mask or config.gate else None)
    rules = load_rules(config.rules) if config.rules is not None else DEFAULT_RULES
    policy = load_policy(config.policy) if clf.manifest.populations else None
    plan = _Plan(clf, segmenter, tuple(dict.fromkeys(methods)), labels, config.method_options, rules, policy)
    return plan, notes


def _faithfulness(
    plan: _Plan, mi: ModelInput, h: Heatmap, steps: int, random_scores: dict[str, tuple[float, float]]
) -> Faithfulness:
    assert h.values is not None
    idx = label_index(plan.clf.labels, h.label)
    f = deletion_insertion(plan.clf, mi, h.values, idx, steps=steps)
    rev = deletion_insertion(plan.clf, mi, h.values, idx, steps=steps, reverse=True)
    if h.label not in random_scores:  # the random reference depends on the finding only, not on the method
        r = deletion_insertion(plan.clf, mi, random_heatmap(mi.geometry, label=h.label), idx, steps=steps)
        random_scores[h.label] = (r.deletion_auc, r.insertion_auc)
    rnd = random_scores[h.label]
    return Faithfulness(f.deletion_auc, f.insertion_auc, rev.deletion_auc, rev.insertion_auc, rnd[0], rnd[1])


def _explain_file(path: Path, stem: str, plan: _Plan, config: ExplainConfig) -> list[ExplainRow]:
    """Maps of one file for the planned findings and methods, written as ``<stem>__<label>__<method>.png/.npy``; one
    ``excluded`` or ``failed`` row when the selection rules leave the file out or it cannot be read (as in predict)."""
    m = plan.clf.manifest
    op = config.operating_point
    base: dict[str, Any] = {"path": str(path), "model_name": m.name, "model_version": m.version, "model_sha256": m.sha256,
                            "model_integrity": m.integrity}
    a = assess(path, plan.rules)
    if a.selection.status is not Status.SCORED or a.image is None:
        status = EXCLUDED if a.selection.status is Status.EXCLUDED else FAILED
        if status == FAILED:
            raise InputError(a.selection.reason or "cannot be read")
        return [ExplainRow(**base, status=status, reason=a.selection.reason)]
    image: Image2D = a.image
    mi = plan.clf.preprocess(image)
    features = any(get_method(n).needs_features for n in plan.methods) or (
        plan.policy is not None and config.population is None and m.population_estimate is not None)
    output = plan.clf.run(mi.array[None], features=features)
    population = _population(plan, a.probe, output.features, config.population)
    base["population"] = population or ""
    targets = list(plan.labels) if plan.labels is not None else flagged_labels(plan.clf, output.scores[0], operating_point=op)
    if not targets:
        return [ExplainRow(**base, status=NOTHING_FLAGGED, reason=f"no finding reached its {op} threshold")]
    heatmaps = explain_input(plan.clf, mi, targets, list(plan.methods), options=plan.options, output=output)
    decides = {lab: _decides(plan, lab, population) for lab in targets}
    heatmaps = [h if decides[h.label] is not False or population is None
                else dataclasses.replace(h, notes=(*h.notes, reported_only_note(population))) for h in heatmaps]
    fields = None
    shares: list[float | None] = [None] * len(heatmaps)
    if plan.segmenter is not None:
        mask = plan.segmenter.segment(image)
        fields = lung_fields(mask)
        if fields is not None:  # measured on the ungated maps: gating removes what is measured
            shares = [outside_share(h, fields) for h in heatmaps]
            heatmaps = [h if sh is None else dataclasses.replace(h, notes=(*h.notes, share_note(sh)))
                        for h, sh in zip(heatmaps, shares, strict=True)]
        if config.gate:
            heatmaps = [gate_heatmap(h, mask) for h in heatmaps]
    random_scores: dict[str, tuple[float, float]] = {}
    rows: list[ExplainRow] = []
    for h, share in zip(heatmaps, shares, strict=True):
        t = m.thresholds.get(h.label)
        thr = None if t is None else getattr(t, op).threshold
        common: dict[str, Any] = {
            **base, "label": h.label, "method": h.method, "score": h.score, "threshold": thr, "operating_point": op,
            "flagged": None if thr is None or h.score is None else bool(h.score >= thr),
            "outside_lungs": share, "shortcut": None if share is None else is_shortcut(share),
            "decides": decides.get(h.label),
        }
        if h.empty:
            rows.append(ExplainRow(**common, status=NO_MAP, reason=h.reason))
            continue
        png = config.out / heatmap_filename(stem, h.label, h.method)
        png_path, npy_path = save_heatmap(png, image, h, overlay_text(m, h, operating_point=op), max_side=config.max_side,
                                          outline=fields)
        rows.append(ExplainRow(
            **common, status=MAP, png=png_path.name, npy=npy_path.name if npy_path else "",
            faithfulness=_faithfulness(plan, mi, h, config.steps, random_scores) if config.evaluate else None,
        ))
    return rows


def _population(plan: _Plan, probe: Probe | None, features: Any, option: str | None) -> str | None:
    """The patient's population as predict chooses it (`choose_population`): the DICOM age, else ``option``
    (``--population``), else the model's confident estimate from the image, else unknown; None without populations."""
    m = plan.clf.manifest
    if plan.policy is None:
        return None
    age = probe.dicom.patient_age_years if probe is not None and probe.dicom is not None else None
    probability = None
    if age is None and option is None and m.population_estimate is not None and features is not None:
        try:
            probability = float(m.population_estimate.probability(features)[0])
        except ValueError as exc:  # as in predict: the estimate's weights do not fit the graph, so it is not used
            log.warning("model '%s': %s; the population estimate is not used", m.name, exc)
    return choose_population(m, age, option, probability).population


def _decides(plan: _Plan, label: str, population: str | None) -> bool | None:
    """May ``label`` move a priority for ``population`` (predict's rule, `counts_for`); None without populations."""
    if plan.policy is None or population is None:
        return None
    return counts_for(plan.clf.manifest, plan.policy, label, population)


def write_explain_csv(path: Path, rows: Sequence[ExplainRow]) -> Path:
    """Write ``rows`` as explain.csv, atomically; cells made safe as in results.csv (``SafeCsvWriter``)."""
    with atomic_output(path) as fh:
        writer = SafeCsvWriter(fh, CSV_FIELDS, note_column="reason")
        for r in rows:
            writer.writerow(r.csv_row())
    return path


def run_explain(config: ExplainConfig, *, on_file: Callable[[ExplainedFile], None] | None = None) -> ExplainSummary:
    """Explain every file under ``config.inputs`` into ``config.out`` and write explain.csv there.

    One bad file never stops the run: it gets a "failed" row and a warning. ``on_file`` is called after
    each file (e.g. to show progress or the warning at once).

    Raises:
        ConfigError: an unknown method or finding.
        ModelError: a model cannot be loaded, or a method does not apply to it.
        InputError: no file was found under the inputs.
        OutputError: the output folder or explain.csv cannot be written, or another run holds the folder.
    """
    check_out_is_not_an_input(config.out, config.inputs)  # before anything is written, the lock file included
    with lock_output(config.out, "explain"):  # one writer per output folder (cxrtriage.outdir)
        return _run_explain(config, on_file)


def _run_explain(config: ExplainConfig, on_file: Callable[[ExplainedFile], None] | None) -> ExplainSummary:
    plan, notes = _plan(config)
    files = list(discover(config.inputs, exclude=(config.out,)))
    if not files:
        raise InputError(f"no files found under {', '.join(map(str, config.inputs))}")
    try:
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{config.out}: cannot create the output folder ({exc.strerror}); check its parent and "
                          "permissions") from exc
    stems = StemRegistry()
    rows: list[ExplainRow] = []
    warnings: list[str] = []
    for path in files:
        stem = stems.stem_for(path)
        warning = ""
        try:
            file_rows = _explain_file(path, stem, plan, config)
        except CxrTriageError as exc:
            warning = f"{path}: {exc}"
            file_rows = [ExplainRow(path=str(path), status=FAILED, reason=str(exc))]
        except Exception as exc:  # one bad file never stops the run; the reason is kept
            log.debug("unexpected error on %s", path, exc_info=True)
            warning = f"{path}: unexpected {type(exc).__name__}: {exc}"
            file_rows = [ExplainRow(path=str(path), status=FAILED, reason=f"{type(exc).__name__}: {exc}")]
        rows += file_rows
        if warning:
            warnings.append(warning)
        if on_file is not None:
            on_file(ExplainedFile(path, stem, tuple(file_rows), warning))
    csv_path = write_explain_csv(config.out / CSV_NAME, rows)
    return ExplainSummary(tuple(rows), len(files), config.out, csv_path, plan.methods, tuple(notes), tuple(warnings))


def faithfulness_means(rows: Sequence[ExplainRow]) -> dict[str, tuple[int, Faithfulness]]:
    """Per method: how many maps have faithfulness scores, and the mean of each score over them."""
    by_method: dict[str, list[Faithfulness]] = {}
    for r in rows:
        if r.faithfulness is not None:
            by_method.setdefault(r.method, []).append(r.faithfulness)
    return {
        method: (len(fs), Faithfulness(*(sum(getattr(f, k) for f in fs) / len(fs) for k in FAITHFULNESS_FIELDS)))
        for method, fs in by_method.items()
    }
