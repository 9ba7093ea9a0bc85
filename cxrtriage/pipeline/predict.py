"""``run_predict``: files → decode workers → batched ONNX inference → hooks → results, worklist, run.json, reports.

Read ``run_predict`` top to bottom for the stages:

1. ``discover`` the input files (streamed; folders are walked lazily);
2. ``decode_stream`` probes, selects (``--rules``), reads and preprocesses each file in worker
   processes, in input order, with a bounded number of files in flight;
3. readable files are batched (``batch_size``) and run through the classifier in this process;
4. every hook (``build_hooks``) updates the batch's records: site calibration, lungs, quality, heat maps, triage;
5. one record per input file goes to ``DIR/results.csv`` + ``DIR/results.jsonl`` (crash-safe);
6. the hooks finish (triage writes ``worklist.csv``), ``run.json`` is written, then the reports (``--report``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.errors import CxrTriageError
from cxrtriage.model import Classifier, load_classifier
from cxrtriage.outdir import lock_output
from cxrtriage.pipeline.config import PredictConfig, auto_workers, in_flight_window
from cxrtriage.pipeline.decode import Decoded, DecodeTask, decode_stream, prestart
from cxrtriage.pipeline.engine import (
    ProgressCounter,
    ProgressUpdate,
    check_inputs,
    discover_paths,
    selection_rules,
    with_model,
    write_in_batches,
)
from cxrtriage.pipeline.hooks.base import BatchItem, PredictHook, PredictSummary, RunContext, ScoredBatch
from cxrtriage.pipeline.hooks.heatmaps import HeatmapsHook
from cxrtriage.pipeline.hooks.lungs import LungsHook
from cxrtriage.pipeline.hooks.quality import QualityHook
from cxrtriage.pipeline.hooks.site import SiteHook
from cxrtriage.pipeline.hooks.triage import TriageHook
from cxrtriage.pipeline.provenance import run_record
from cxrtriage.pipeline.reports import report_destination, run_reports
from cxrtriage.preprocess import PixelNeeds, PreprocessRecipe
from cxrtriage.results import ImageRecord, ResultsWriter, Status, result_columns, utc_now, write_run_json

log = logging.getLogger(__name__)


def build_hooks(config: PredictConfig, model: Classifier) -> list[PredictHook]:
    """The hooks a run uses, from its config, in run order. Owners of an extension add their line here.

    Loads what they need (policy, site file, segmenter) now, so a bad option fails before any file is scored.
    """
    hooks: list[PredictHook] = []
    triage = TriageHook.from_config(config, model)
    if triage.site is not None:
        hooks.append(SiteHook(triage.site, model.labels))
    if config.lungs_on:
        hooks.append(LungsHook.from_config(config))
    hooks.append(QualityHook())
    if config.heatmaps:
        hooks.append(HeatmapsHook.from_config(config, model))
    hooks.append(triage)
    return sorted(hooks, key=lambda h: h.order)


def _checked(new: ImageRecord, old: ImageRecord) -> ImageRecord:
    if new.path != old.path or new.status is not old.status:
        raise ValueError(f"may not change the path or status of {old.path}")
    return new


def _unscored(record: ImageRecord, hooks: Sequence[PredictHook], ctx: RunContext) -> ImageRecord:
    """Let every hook update an excluded/failed record."""
    for hook in hooks:
        try:
            record = _checked(hook.on_unscored(record, ctx), record)
        except Exception as exc:  # a hook's bug must not lose the record
            log.warning("extension %s failed on %s: %s", hook.name, record.path, exc)
    return record


def pixel_needs(config: PredictConfig, model: Classifier, hooks: Sequence[PredictHook]) -> PixelNeeds | None:
    """How far the decode step may reduce each image: the classifier's input, the hooks' model inputs, and the
    long side of what the hooks draw at the image's geometry; None (full resolution) with ``--full-resolution``
    or when a hook needs the image without saying how much of it."""
    if not config.reduced_decode:
        return None
    drawing = [h for h in hooks if h.needs_images]
    if any(h.image_long_side is None for h in drawing):
        return None
    recipes = (model.manifest.preprocessing, *(r for h in hooks for r in h.recipes))
    return PixelNeeds(recipes, min_long_side=max((h.image_long_side or 0 for h in drawing), default=0))


def _score_batch(items: list[Decoded], model: Classifier, hooks: Sequence[PredictHook],
                 ctx: RunContext, extra: tuple[PreprocessRecipe, ...] = ()) -> list[ImageRecord]:
    """Run the classifier and the hooks on ``items`` (all readable); returns their records."""
    records = [with_model(d.record, model.manifest) for d in items]
    inputs = [d.model_input for d in items if d.model_input is not None]
    want_features = any(h.needs_features for h in hooks) and model.has_features
    try:
        out = model.run(np.stack([mi.array for mi in inputs]), features=want_features)
    except CxrTriageError as exc:
        failed = [r.replace(status=Status.FAILED, reason=f"inference failed: {exc}") for r in records]
        return [_unscored(r, hooks, ctx) for r in failed]
    records = [r.replace(scores={lab: float(out.scores[i, j]) for j, lab in enumerate(model.labels)})
               for i, r in enumerate(records)]
    for hook in hooks:
        batch = ScoredBatch(
            items=tuple(BatchItem(d.index, mi, r, d.image, d.image_checks, tuple(zip(extra, d.extra_inputs, strict=False)))
                        for d, mi, r in zip(items, inputs, records, strict=True)),
            output=out,
        )
        try:
            updated = list(hook.on_batch(batch, ctx))
            if len(updated) != len(records):
                raise ValueError(f"returned {len(updated)} records for a batch of {len(records)}")
            records = [_checked(new, old) for new, old in zip(updated, records, strict=True)]
        except Exception as exc:  # an extension's failure must not lose the scores
            log.warning("extension %s failed on a batch: %s", hook.name, exc)
            records = [r.with_note(f"{hook.name} failed: {exc}") for r in records]
    return records


def run_predict(
    config: PredictConfig,
    *,
    model: Classifier | None = None,
    hooks: Sequence[PredictHook] | None = None,
    on_progress: Callable[[ProgressUpdate], None] | None = None,
) -> PredictSummary:
    """Score every input file and write ``results.csv`` / ``results.jsonl`` (and the rest) under ``config.out_dir``.

    The output folder is locked for the whole run (``cxrtriage.outdir``): a second run into it is refused.
    Raises ``InputError`` when no input file exists, ``ModelError`` when the model cannot be
    loaded, ``ConfigError`` when an option is invalid (``--out`` is an input folder), ``OutputError`` when the
    output cannot be written or another run holds it. Problems of single files never
    raise: they become ``failed`` / ``excluded`` records.
    """
    check_inputs(config.inputs, config.out_dir)  # before anything is written, the lock file included
    with lock_output(config.out_dir, "predict"):
        return _run_predict(config, model=model, hooks=hooks, on_progress=on_progress)


def _run_predict(
    config: PredictConfig,
    *,
    model: Classifier | None,
    hooks: Sequence[PredictHook] | None,
    on_progress: Callable[[ProgressUpdate], None] | None,
) -> PredictSummary:
    t0 = time.perf_counter()
    started_at = utc_now()
    destination = report_destination(config)
    workers = auto_workers() if config.workers is None else config.workers
    prestart(workers)
    if model is None:
        model = load_classifier(config.model, device=config.device, strict_device=config.strict_device,
                                intra_op_threads=config.intra_op_threads, spinning=workers == 0)
    hooks = build_hooks(config, model) if hooks is None else list(hooks)
    rules = selection_rules(config.rules)
    ctx = RunContext(config=config, model=model, out_dir=Path(config.out_dir))
    writer = ResultsWriter(config.out_dir, result_columns(model.labels, [c for h in hooks for c in h.columns]))
    keep_images = any(h.needs_images for h in hooks)
    checks = any(h.needs_image_checks for h in hooks)
    recipe = model.manifest.preprocessing
    needs = pixel_needs(config, model, hooks)
    extra = tuple(dict.fromkeys(r for h in hooks for r in h.recipes))
    paths = discover_paths(config.inputs, config.out_dir)
    tasks = (DecodeTask(i, p, recipe, rules, keep_images, checks, needs, extra) for i, p in enumerate(paths))
    counter = ProgressCounter(on_progress)
    write_in_batches(
        decode_stream(tasks, workers=workers, window=in_flight_window(config.batch_size, workers, keep_images)),
        writer, counter, batch_size=config.batch_size,
        process=lambda ok: _score_batch(ok, model, hooks, ctx, extra),
        unreadable=lambda d: _unscored(with_model(d.record, model.manifest), hooks, ctx),
        inputs=config.inputs,
    )
    c = counter.counts
    summary = PredictSummary(
        total=writer.rows_written, scored=c[Status.SCORED], excluded=c[Status.EXCLUDED], failed=c[Status.FAILED],
        seconds=time.perf_counter() - t0, results_csv=writer.csv_path,
        results_jsonl=writer.jsonl_path or writer.csv_path,
        model_name=model.manifest.name, model_version=model.manifest.version, device=model.session.device.value,
    )
    outcomes = {hook.name: hook.on_finish(ctx, summary) for hook in hooks}
    counts = {"files": summary.total, "scored": summary.scored, "excluded": summary.excluded, "failed": summary.failed}
    record = run_record(config, model, started_at=started_at, finished_at=utc_now(), counts=counts, hooks=hooks)
    run_json = write_run_json(ctx.out_dir, record)
    report = run_reports(config, ctx.out_dir, destination) if config.reports_on else None
    return dataclasses.replace(summary, seconds=time.perf_counter() - t0, outcomes=outcomes, run_json=run_json,
                               run=record, report=report)


def predict(inputs: str | Path | Sequence[str | Path], out_dir: str | Path, **options: Any) -> PredictSummary:
    """Library entry point: ``cxrtriage.predict("scans/", "results/", model="cxr-classifier")``.

    ``options`` are ``PredictConfig`` fields.
    """
    paths = (inputs,) if isinstance(inputs, str | Path) else tuple(inputs)
    return run_predict(PredictConfig(inputs=tuple(Path(p) for p in paths), out_dir=Path(out_dir), **options))
