"""The predict pipeline: files → decode workers → batched ONNX inference → extensions → results rows.

Read ``run_predict`` top to bottom for the stages:

1. ``discover`` the input files (streamed; folders are walked lazily);
2. ``decode_stream`` probes, selects (``--rules``), reads and preprocesses each file in worker
   processes, in input order, with a bounded number of files in flight;
3. scored files are batched (``batch_size``) and run through the classifier in this process;
4. every ``PredictHook`` sees each batch and may add columns and write artefacts;
5. one row per input file goes to ``DIR/results.csv`` + ``DIR/results.jsonl`` (crash-safe).

Extension point (for heatmaps, triage priority, site calibration, reports, lung measures):
subclass ``PredictHook`` and return it from ``build_hooks`` (or pass ``hooks=`` to
``run_predict``)::

    class PriorityHook(PredictHook):
        name = "triage"
        columns = ("priority", "priority_reason")   # columns it fills (extra ones join the header)
        needs_images = False                       # True: batch.items[i].image is the full Image2D
        needs_features = False                     # True: batch.output.features is [N, C, h, w]

        def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> list[dict[str, Any]]:
            return [{"priority": ..., "priority_reason": ...} for item in batch.items]

        def on_finish(self, ctx: RunContext, summary: PredictSummary) -> None:
            ...  # run-level artefacts (worklist, report), after results.csv is in place

``on_batch`` gets a ``ScoredBatch`` (``items[i].path/.image/.model_input/.row``, where ``row`` is
a read-only view of the row so far, scores included; ``output`` is the batch's
``ClassifierOutput``, row ``i`` of its arrays is ``items[i]``) and a ``RunContext`` (config, model,
``out_dir``, ``stem_for(path)`` for unique artefact names). It returns one dict per item; hooks run
in list order, so a later hook sees an earlier one's columns (site calibration before triage).
A hook may overwrite any column except ``path`` and ``status``; artefact paths in rows are
relative to ``out_dir``. A hook that raises does not stop the run: its columns stay empty and
the rows' ``reason`` says why. Only scored files reach ``on_batch``; excluded and failed rows go
to ``on_unscored`` (triage gives them ``not_assessed``).

``build_hooks`` runs the hooks in ``order`` (site calibration 10, lungs 20, quality 30, others such as
heat maps 50, triage 90). ``ctx.lung_masks`` holds the current batch's lung masks (by item index)
once the lungs hook ran. At the end: ``results.csv``/``.jsonl`` are closed, every hook's ``on_finish``
runs (triage writes ``worklist.csv``; its return value lands in ``PredictSummary.outcomes``),
``run.json`` is written from each hook's ``provenance()``, then the reports (``--report``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from cxrtriage.errors import ConfigError, CxrTriageError, InputError
from cxrtriage.model import Classifier, ClassifierOutput, LungMask, load_classifier
from cxrtriage.pipeline_decode import EXCLUDED, FAILED, OK, Decoded, DecodeTask, decode_stream, prestart
from cxrtriage.preprocess import ModelInput
from cxrtriage.report.results import ResultsWriter, result_columns, score_column
from cxrtriage.types import Image2D

log = logging.getLogger(__name__)

PROTECTED_COLUMNS = frozenset({"path", "status"})


@dataclass(frozen=True, slots=True)
class PredictConfig:
    """Every option of a predict run (``cxrtriage predict`` maps its options 1:1 onto these)."""

    inputs: tuple[Path, ...]
    out_dir: Path
    model: str | None = None  # name in the models dir, or path to .onnx / manifest; None = default classifier
    batch_size: int = 16
    device: str = "auto"
    strict_device: bool = False
    workers: int | None = None  # decode processes; None = auto, 0 = decode in this process
    intra_op_threads: int | None = None  # onnxruntime threads; None = one per core
    fail_on_error: bool = False
    rules: Path | None = None  # selection rules TOML; None = the built-in frontal-CXR rules
    policy: Path | None = None  # triage policy TOML; None = the packaged default policy
    site: Path | None = None  # site calibration TOML (`cxrtriage calibrate`); None = the model's scores/thresholds
    lungs: bool | None = None  # lung masks + areas; None = on exactly when reports are written
    segmenter: str | None = None  # lung segmenter name or path; None = the default lung-segmenter
    report: bool = False  # HTML (+PDF) study reports and DIR/report/index.html after the run
    pdf: bool = True  # a PDF beside each HTML report
    dicom: bool = False  # DICOM SR/SC/SEG/encapsulated PDF into DIR/dicom/ (implies report)
    deidentify: bool = False  # pseudonyms instead of identities in the HTML/PDF reports
    send: str | None = None  # HOST:PORT to C-STORE the DICOM results to (implies dicom)
    aet: str = "CXRTRIAGE"  # our (calling) AE title for send
    called_aet: str = "ANY-SCP"  # the PACS (called) AE title for send
    modality: str = "DOC"  # Modality of the encapsulated PDF
    heatmaps: bool = False  # overlays + raw maps of the flagged findings under DIR/heatmaps/ (column heatmaps)
    heatmap_method: str = "gradcam"  # a CAM method that needs no extra model pass (see docs/explain.md)

    @property
    def dicom_on(self) -> bool:
        return self.dicom or self.send is not None

    @property
    def reports_on(self) -> bool:
        return self.report or self.dicom_on

    @property
    def lungs_on(self) -> bool:
        return self.reports_on if self.lungs is None else self.lungs

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ConfigError("no INPUT given; pass one or more files or folders")
        if not 1 <= self.batch_size <= 1024:
            raise ConfigError(f"--batch-size must be within 1..1024, got {self.batch_size}")
        if self.workers is not None and not 0 <= self.workers <= 64:
            raise ConfigError(f"--workers must be within 0..64, got {self.workers}")
        if self.intra_op_threads is not None and self.intra_op_threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {self.intra_op_threads}")


def auto_workers() -> int:
    """Decode processes when none are asked for: half the cores (at least 1, at most 4).

    On 2 cores one decode process beside onnxruntime's threads keeps both cores busy for
    PNG/JPEG/uncompressed DICOM; see benchmarks/bench_predict.py.
    """
    n = os.cpu_count() or 1
    return max(1, min(4, n // 2))


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One scored file inside a batch, as a hook sees it."""

    index: int
    path: str
    model_input: ModelInput
    row: Mapping[str, Any]
    image: Image2D | None = None
    image_checks: tuple[Any, ...] | None = None  # measure.quality image checks, run in the decode worker


@dataclass(frozen=True, slots=True)
class ScoredBatch:
    items: tuple[BatchItem, ...]
    output: ClassifierOutput

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class PredictSummary:
    total: int
    scored: int
    excluded: int
    failed: int
    seconds: float
    results_csv: Path
    results_jsonl: Path
    model_name: str
    model_version: str
    device: str
    outcomes: Mapping[str, Any] = field(default_factory=dict)  # hook name -> what its on_finish returned
    run_json: Path | None = None
    report: Any = None  # pipeline_run.ReportOutcome when reports were written

    @property
    def images_per_s(self) -> float:
        return self.scored / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    done: int
    scored: int
    excluded: int
    failed: int
    elapsed: float


@dataclass(slots=True)
class RunContext:
    """What a hook may use: the run's config, the model, the output folder, unique file stems."""

    config: PredictConfig
    model: Classifier
    out_dir: Path
    lung_masks: dict[int, LungMask] = field(default_factory=dict)  # this batch's masks by item index (lungs hook)
    _stems: dict[str, str] = field(default_factory=dict)
    _taken: set[str] = field(default_factory=set)

    def stem_for(self, path: str | Path) -> str:
        """A file-name stem for ``path``'s artefacts, unique within this run and stable per path."""
        return unique_stem(str(path), self._stems, self._taken)


def unique_stem(path: str, assigned: dict[str, str], taken: set[str]) -> str:
    """``name`` for ``.../name.dcm``; ``name_2``, ``name_3``... when another input had that stem."""
    if path in assigned:
        return assigned[path]
    base = Path(path).name
    for suffix in (".gz", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".mha", ".nrrd"):
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base) or "image"
    stem, k = base, 1
    while stem.lower() in taken:
        k += 1
        stem = f"{base}_{k}"
    taken.add(stem.lower())
    assigned[path] = stem
    return stem


def in_flight_window(batch_size: int, workers: int, keep_images: bool, override: int | None = None) -> int:
    """How many files may be decoded ahead of inference: enough for the next batch to be
    decoded while this one runs, few enough that memory stays flat (fewer when full images travel)."""
    if override:
        return max(1, override)
    if keep_images:
        return batch_size + 2 * max(workers, 1)
    return 2 * batch_size + 4 * max(workers, 1)


class PredictHook:
    """Base class of a per-batch extension of ``run_predict`` (see the module docstring)."""

    name: str = "hook"
    columns: tuple[str, ...] = ()
    needs_images: bool = False
    needs_features: bool = False
    needs_image_checks: bool = False  # True: items[i].image_checks holds measure.quality.image_checks(image)
    order: int = 50  # build_hooks runs hooks by this (site 10, lungs 20, quality 30, triage 90)

    def on_batch(self, batch: ScoredBatch, ctx: RunContext) -> Sequence[Mapping[str, Any]]:
        return [{} for _ in batch.items]

    def on_unscored(self, row: Mapping[str, Any], ctx: RunContext) -> Mapping[str, Any]:
        """Columns for an excluded or failed row (read-only ``row``); must not raise."""
        return {}

    def on_finish(self, ctx: RunContext, summary: PredictSummary) -> Any:
        """Run-level artefacts, after results.csv/.jsonl are closed; the return value is ``summary.outcomes[name]``."""
        return None

    def provenance(self) -> Mapping[str, Any]:
        """Keys this hook adds to run.json (called after ``on_finish``)."""
        return {}


def build_hooks(config: PredictConfig, model: Classifier) -> list[PredictHook]:
    """The hooks a run uses, from its config, in run order. Owners of an extension add their line here.

    Loads what they need (policy, site file, segmenter) now, so a bad option fails before any file is scored.
    """
    from cxrtriage.pipeline_lungs import LungsHook, QualityHook
    from cxrtriage.pipeline_triage import SiteHook, TriageHook

    hooks: list[PredictHook] = []
    triage = TriageHook.from_config(config, model)
    if triage.site is not None:
        hooks.append(SiteHook(triage.site, model.labels))
    if config.lungs_on:
        hooks.append(LungsHook.from_config(config))
    hooks.append(QualityHook())
    if config.heatmaps:
        from cxrtriage.pipeline_heatmaps import HeatmapsHook

        hooks.append(HeatmapsHook.from_config(config, model))
    hooks.append(triage)
    return sorted(hooks, key=lambda h: h.order)


def discover_paths(inputs: Iterable[Path]) -> Iterator[str]:
    """Every input file under ``inputs`` (files as given, folders walked), streamed."""
    from cxrtriage.io import discover

    for p in discover(list(inputs)):
        yield str(p)


def selection_rules(path: Path | None) -> Any:
    """The selection rules of a run: the TOML file given, else the built-in frontal-CXR rules."""
    from cxrtriage.io import SelectionRules, load_rules

    return load_rules(path) if path is not None else SelectionRules()


def _base_row(d: Decoded, model: Classifier) -> dict[str, Any]:
    m = model.manifest
    row: dict[str, Any] = {"path": d.path, "status": {OK: "scored", EXCLUDED: "excluded", FAILED: "failed"}[d.status],
                           "reason": d.reason or None}
    row.update(d.meta)
    row.update(model_name=m.name, model_version=m.version, model_sha256=m.sha256)
    return row


class ProgressCounter:
    """Counts rows by status and reports each one to an optional callback."""

    def __init__(self, callback: Callable[[ProgressUpdate], None] | None) -> None:
        self.callback = callback
        self.t0 = time.perf_counter()
        self.counts = {"scored": 0, "excluded": 0, "failed": 0}

    def add(self, status: str) -> None:
        self.counts[status] += 1
        if self.callback is not None:
            c = self.counts
            self.callback(ProgressUpdate(sum(c.values()), c["scored"], c["excluded"], c["failed"],
                                         time.perf_counter() - self.t0))


def write_in_batches(
    decoded: Iterable[Decoded],
    writer: ResultsWriter,
    counter: ProgressCounter,
    *,
    batch_size: int,
    process: Callable[[list[Decoded]], Sequence[dict[str, Any]]],
    unreadable: Callable[[Decoded], dict[str, Any]],
    inputs: Sequence[Path],
) -> None:
    """Write one row per decoded item, in input order, running ``process`` on batches of readable items.

    A batch closes when it holds ``batch_size`` readable items; an excluded/failed item with nothing
    waiting before it is written at once. The writer is closed (atomic rename) at the end, or aborted on
    any error; ``InputError`` when there was no input file at all.
    """
    pending: list[Decoded] = []  # decoded items waiting for a full batch, in input order

    def flush() -> None:
        ok = [d for d in pending if d.status == OK]
        done = iter(process(ok) if ok else [])
        for d in pending:
            row = next(done) if d.status == OK else unreadable(d)
            writer.write(row)
            counter.add(row["status"])
        writer.flush()
        pending.clear()

    try:
        n_ok = 0
        for d in decoded:
            pending.append(d)
            n_ok += d.status == OK
            if n_ok >= batch_size or n_ok == 0:
                flush()
                n_ok = 0
        if pending:
            flush()
        if writer.rows_written == 0:
            writer.abort(remove=True)
            raise InputError(f"no input files found in {', '.join(str(p) for p in inputs)}")
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _unscored(row: dict[str, Any], hooks: Sequence[PredictHook], ctx: RunContext) -> dict[str, Any]:
    """Let every hook add its columns to an excluded/failed row."""
    for hook in hooks:
        try:
            cols = dict(hook.on_unscored(MappingProxyType(row), ctx))
            if set(cols) & PROTECTED_COLUMNS:
                raise ValueError(f"may not change column(s) {sorted(set(cols) & PROTECTED_COLUMNS)}")
            row.update(cols)
        except Exception as exc:  # a hook's bug must not lose the row
            log.warning("extension %s failed on %s: %s", hook.name, row.get("path"), exc)
    return row


def _score_batch(items: list[Decoded], model: Classifier, hooks: Sequence[PredictHook], ctx: RunContext) -> list[dict[str, Any]]:
    """Run the classifier and the hooks on ``items`` (all decoded OK); returns their rows."""
    rows = [_base_row(d, model) for d in items]
    inputs = [d.model_input for d in items]
    assert all(mi is not None for mi in inputs)
    batch = np.stack([mi.array for mi in inputs if mi is not None])
    want_features = any(h.needs_features for h in hooks) and model.has_features
    try:
        out = model.run(batch, features=want_features)
    except CxrTriageError as exc:
        for row in rows:
            row.update(status="failed", reason=f"inference failed: {exc}")
            _unscored(row, hooks, ctx)
        return rows
    for i, row in enumerate(rows):
        for j, label in enumerate(model.labels):
            row[score_column(label)] = float(out.scores[i, j])
    for hook in hooks:
        view = ScoredBatch(
            items=tuple(BatchItem(d.index, d.path, mi, MappingProxyType(row), d.image, d.image_checks)  # type: ignore[arg-type]
                        for d, mi, row in zip(items, inputs, rows, strict=True)),
            output=out,
        )
        try:
            extra = list(hook.on_batch(view, ctx))
            if len(extra) != len(rows):
                raise ValueError(f"returned {len(extra)} rows for a batch of {len(rows)}")
            for row, cols in zip(rows, extra, strict=True):
                bad = set(cols) & PROTECTED_COLUMNS
                if bad:
                    raise ValueError(f"may not change column(s) {sorted(bad)}")
                row.update(cols)
        except Exception as exc:  # an extension's failure must not lose the scores
            log.warning("extension %s failed on a batch: %s", hook.name, exc)
            for row in rows:
                note = f"{hook.name} failed: {exc}"
                row["reason"] = f"{row['reason']}; {note}" if row.get("reason") else note
    return rows


def run_predict(
    config: PredictConfig,
    *,
    model: Classifier | None = None,
    hooks: Sequence[PredictHook] | None = None,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
) -> PredictSummary:
    """Score every input file and write ``results.csv`` / ``results.jsonl`` under ``config.out_dir``.

    Raises ``InputError`` when no input file exists, ``ModelError`` when the model cannot be
    loaded, ``OutputError`` when the output cannot be written. Problems of single files never
    raise: they become ``failed`` / ``excluded`` rows.
    """
    from cxrtriage.pipeline_run import RUN_JSON, report_destination, run_record, run_reports, utc_now, write_json

    t0 = time.perf_counter()
    started_at = utc_now()
    missing = [str(p) for p in config.inputs if not Path(p).exists()]
    if missing:  # checked before anything is written (discover would raise the same later)
        raise InputError(f"input not found: {', '.join(missing)}; check the path(s)")
    destination = report_destination(config)
    workers = auto_workers() if config.workers is None else config.workers
    prestart(workers)
    if model is None:
        model = load_classifier(config.model, device=config.device, strict_device=config.strict_device,
                                intra_op_threads=config.intra_op_threads, spinning=workers == 0)
    hooks = build_hooks(config, model) if hooks is None else list(hooks)
    rules = selection_rules(config.rules)
    ctx = RunContext(config=config, model=model, out_dir=Path(config.out_dir))
    extra_cols = [c for h in hooks for c in h.columns]
    writer = ResultsWriter(config.out_dir, result_columns(model.labels, extra_cols))
    keep_images = any(h.needs_images for h in hooks)
    checks = any(h.needs_image_checks for h in hooks)
    window = in_flight_window(config.batch_size, workers, keep_images)
    recipe = model.manifest.preprocessing
    tasks = (DecodeTask(i, p, recipe, rules, keep_images, checks) for i, p in enumerate(discover_paths(config.inputs)))
    counter = ProgressCounter(on_progress)
    write_in_batches(
        decode_stream(tasks, workers=workers, window=window), writer, counter, batch_size=config.batch_size,
        process=lambda ok: _score_batch(ok, model, hooks, ctx),
        unreadable=lambda d: _unscored(_base_row(d, model), hooks, ctx),
        inputs=config.inputs,
    )
    c = counter.counts
    summary = PredictSummary(
        total=writer.rows_written, scored=c["scored"], excluded=c["excluded"], failed=c["failed"],
        seconds=time.perf_counter() - t0, results_csv=writer.csv_path,
        results_jsonl=writer.jsonl_path or writer.csv_path,
        model_name=model.manifest.name, model_version=model.manifest.version, device=model.session.device.value,
    )
    outcomes = {hook.name: hook.on_finish(ctx, summary) for hook in hooks}
    counts = {"files": summary.total, "scored": summary.scored, "excluded": summary.excluded, "failed": summary.failed}
    record = run_record(config, model, started_at=started_at, finished_at=utc_now(), counts=counts, hooks=hooks)
    run_json = write_json(ctx.out_dir / RUN_JSON, record)
    report = run_reports(config, ctx.out_dir, destination) if config.reports_on else None
    return dataclasses.replace(summary, seconds=time.perf_counter() - t0, outcomes=outcomes, run_json=run_json,
                               report=report)


def predict(inputs: str | Path | Sequence[str | Path], out_dir: str | Path, **options: Any) -> PredictSummary:
    """Library entry point: ``cxrtriage.predict("scans/", "results/", model="cxr-classifier")``.

    ``options`` are ``PredictConfig`` fields.
    """
    paths = (inputs,) if isinstance(inputs, str | Path) else tuple(inputs)
    return run_predict(PredictConfig(inputs=tuple(Path(p) for p in paths), out_dir=Path(out_dir), **options))
