"""``run_predict``: files → decode workers → batched ONNX inference → hooks → results, worklist, run.json, reports.

Read ``run_predict`` top to bottom for the stages:

1. ``discover`` the input files (streamed; folders are walked lazily);
2. ``decode_stream`` probes, selects (``--rules``), reads and preprocesses each file in worker
   processes, in input order, with a bounded number of files in flight;
3. readable files are batched (``batch_size``) and run through the classifier in this process;
4. every hook (``build_hooks``) updates the batch's records: site calibration, lungs, quality, heat maps, triage;
5. one record per input file goes to ``DIR/results.csv`` + ``DIR/results.jsonl`` (crash-safe);
6. the hooks finish (triage writes ``worklist.csv``), ``run.json`` is written, then the reports (``--report``).

With ``--resume`` every finished batch is also committed to ``DIR/journal.jsonl`` (``cxrtriage.pipeline.journal``),
and the inputs it holds, unchanged since, are taken from it instead of being scored again. Without ``--resume``, a
folder that holds an earlier run gets a new run as a whole: the earlier run's outputs are removed first.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, CxrTriageError, OutputError
from cxrtriage.model import Classifier, load_classifier
from cxrtriage.outdir import describe_run, lock_output, output_marker
from cxrtriage.pipeline.config import PredictConfig, auto_workers, in_flight_window
from cxrtriage.pipeline.decode import (
    GUARD_HINT,
    Decoded,
    DecodeTask,
    WorkerStartError,
    decode_stream,
    importing_main_in_worker,
)
from cxrtriage.pipeline.engine import (
    Finished,
    ProgressCounter,
    ProgressUpdate,
    check_inputs,
    discover_paths,
    selection_rules,
    with_model,
    write_in_batches,
)
from cxrtriage.pipeline.hooks.base import PredictHook, PredictSummary, RunContext
from cxrtriage.pipeline.hooks.triage import WORKLIST_CSV
from cxrtriage.pipeline.journal import JOURNAL_NAME, Journal, JournalEntry, ResumeStream, journal_command
from cxrtriage.pipeline.provenance import run_record
from cxrtriage.pipeline.reports import report_destination, run_reports
from cxrtriage.pipeline.scoring import build_hooks, extra_recipes, pixel_needs, run_fingerprint, score_batch, unscored
from cxrtriage.pipeline.startup import prestart
from cxrtriage.report.folder import clear_reports, identified_slug, other_entries, read_record
from cxrtriage.results import (
    RESULTS_CSV,
    RESULTS_JSONL,
    RUN_JSON,
    ImageRecord,
    ResultsWriter,
    Status,
    read_results_dir,
    result_columns,
    utc_now,
    write_run_json,
)

log = logging.getLogger(__name__)

# What a predict run writes into its folder; an earlier run's are removed before a new run (never a mix of two).
RUN_FILES = (RESULTS_CSV, RESULTS_JSONL, WORKLIST_CSV, RUN_JSON, JOURNAL_NAME)
RUN_FOLDERS = ("masks", "heatmaps", "report", "dicom")
RESUME_HINT = ("run the same command as before to continue it, or leave out --resume to replace the earlier results "
               "as a whole")


# The names the scoring stages are called by in this module (tests/cli/slow_cli.py slows ``_score_batch`` down).
_score_batch = score_batch
_unscored = unscored


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
    check_replaceable(Path(config.out_dir), config.inputs)
    with lock_output(config.out_dir, "predict") as lock:
        return _run_predict(config, model=model, hooks=hooks, on_progress=on_progress, unfinished=lock.unfinished)


def check_replaceable(out_dir: Path, inputs: Sequence[Path]) -> None:
    """Refuse, before anything is written, an output folder whose run files and folders (`RUN_FILES`,
    `RUN_FOLDERS`) a new run would remove but that are not a cxrtriage run's to remove.

    Why: a new run replaces an earlier one as a whole (`clear_earlier_run`), and those names are common ones. A
    user's own ``dicom/`` or ``report/`` folder under ``--out``, or the input folder itself, must never be taken for
    the artefacts of an earlier run: removing them loses data that no run can give back.

    Raises:
        ConfigError: an input lies in one of those files or folders, or the folder holds some of them without any
            mark of a cxrtriage run (`cxrtriage.outdir.output_marker`: its lock file, run.json or results table; or
            a cxrtriage journal).
    """
    targets = {n: out_dir / n for n in (*RUN_FILES, *RUN_FOLDERS)}
    for given in inputs:
        where = Path(given).resolve()
        for name, target in targets.items():
            if target.exists() and (where == target.resolve() or where.is_relative_to(target.resolve())):
                how = "is" if where == target.resolve() else "lies in"
                raise ConfigError(f"input {given} {how} {target}, which predict replaces with its own {name} in "
                                  "--out: choose another --out (outside the inputs)")
    try:
        names = set(os.listdir(out_dir))
    except OSError:  # no folder yet (or none to list): nothing of anyone's to replace
        return
    # A file or link where a run writes a folder is nobody's run: predict makes folders there, never files or links.
    odd = [n for n in RUN_FOLDERS if n in names and ((out_dir / n).is_symlink() or not (out_dir / n).is_dir())]
    if odd:
        raise ConfigError(f"{out_dir}: {', '.join(odd)} {'is a file or link' if len(odd) == 1 else 'are files or links'}"
                          f" where predict writes {'its folder' if len(odd) == 1 else 'folders'} of that name: move "
                          f"{'it' if len(odd) == 1 else 'them'} away, or choose another --out")
    present = [n for n in (*RUN_FILES, *RUN_FOLDERS) if n in names or n + ".partial" in names]
    if present and output_marker(out_dir, names) is None and journal_command(out_dir) is None:
        raise ConfigError(f"{out_dir}: holds {', '.join(present)}, which predict would replace with its own "
                          "outputs, but no cxrtriage run wrote them (no run.json, results table or lock file of "
                          "one): choose another --out, or move them away")


def earlier_run(out_dir: Path, unfinished: dict[str, object] | None) -> str | None:
    """What an output folder holds of an earlier run, in words, or None when it holds none."""
    if unfinished is not None:
        return f"holds the results of an earlier run that did not finish ({describe_run(unfinished)})"
    found = [n for n in (*RUN_FILES, *RUN_FOLDERS) if (out_dir / n).exists() or (out_dir / (n + ".partial")).exists()]
    if found:
        return f"holds the results of an earlier run ({', '.join(found)})"
    return None


def clear_earlier_run(out_dir: Path) -> None:
    """Remove what an earlier predict run wrote into ``out_dir`` (its files, their partial versions, its artefact
    folders), so that the new run replaces it as a whole. ``masks/`` stays when a ``segment`` run owns it too, and
    ``report/`` loses only the report writer's files (`_clear_earlier_reports`)."""
    try:
        names = set(os.listdir(out_dir))
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot list the output folder ({exc.strerror or exc})") from exc
    folders = [f for f in RUN_FOLDERS if not (f == "masks" and "segment.csv" in names)
               and not (f == "report" and _is_real_dir(out_dir / f))]
    if "report" in names and "report" not in folders:
        _clear_earlier_reports(out_dir)  # before the results that name its studies are removed
    try:
        for name in RUN_FILES:
            for n in (name, name + ".partial"):
                if n in names:
                    (out_dir / n).unlink()
        for name in folders:
            path = out_dir / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            elif path.is_dir():
                shutil.rmtree(path)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot remove the results of the earlier run ({exc.strerror or exc}); remove "
                          "them yourself or choose another --out") from exc


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _clear_earlier_reports(out_dir: Path) -> None:
    """Remove the earlier run's reports from ``out_dir/report``, and the folder when nothing else is left in it.

    Why not the whole folder, as the other artefact folders: the README tells users to keep and share ``report/``,
    and `cxrtriage report` never removes a file there that its writer did not write (`cxrtriage.report.folder`);
    predict replacing an earlier run must not be the one command that loses a user's notes kept beside the pages.
    The writer's pages are known by their study slugs: those of the earlier results' studies, and the record's.
    """
    report_dir = out_dir / "report"
    try:
        keys = {r.study for r in read_results_dir(out_dir).records}
    except (CxrTriageError, OSError, ValueError):  # no readable results: the record and the pseudonyms' form remain
        keys = set()
    record = read_record(report_dir)
    slugs = {identified_slug(k) for k in keys} | (record.studies if record else set())
    removed = clear_reports(report_dir, slugs)
    left = other_entries(report_dir, slugs)
    if not left:
        try:
            report_dir.rmdir()
        except OSError as exc:
            raise OutputError(f"{report_dir}: cannot remove the report folder of the earlier run "
                              f"({exc.strerror or exc}); remove it yourself or choose another --out") from exc
        return
    kept = ", ".join(p.name for p in left[:3]) + (", ..." if len(left) > 3 else "")
    if removed:
        log.warning("%s: the earlier run's reports were removed; %d file(s) or folder(s) that cxrtriage did not write "
                    "stay (%s)", report_dir, len(left), kept)
    else:  # only the user's own files: nothing of a run to say twice
        log.info("%s: holds only file(s) or folder(s) that cxrtriage did not write (%s); they stay", report_dir, kept)


def _journal_for(config: PredictConfig, fingerprint: dict[str, Any], unfinished: dict[str, object] | None) -> Journal | None:
    """The journal of this run (``--resume``), after the folder was made ready: an earlier run replaced as a whole,
    or continued from its journal. Says which in the log."""
    out = Path(config.out_dir)
    owner = journal_command(out)
    if owner not in (None, "predict"):  # a node's folder: its journal is the record of what it received and scored
        raise ConfigError(f"{out}: holds the output of `cxrtriage {owner}` (its journal, results and received files); "
                          "choose another --out for predict")
    earlier = earlier_run(out, unfinished)
    if config.resume and (out / JOURNAL_NAME).is_file():
        journal = Journal.open(out, "predict", fingerprint, resume_hint=RESUME_HINT)
        log.info("%s: resuming the earlier run from its %s (%d input(s) finished); inputs changed since are scored "
                 "again", out, JOURNAL_NAME, sum(1 for _ in journal.entries()))
        return journal
    if earlier is not None:
        why = ("it has no journal to resume from (that run did not use --resume)" if config.resume
               else "add --resume to continue an unfinished run instead")
        log.warning("%s: %s; this run replaces them as a whole (%s)", out, earlier, why)
        clear_earlier_run(out)
    return Journal.create(out, "predict", fingerprint) if config.resume else None


def _run_predict(
    config: PredictConfig,
    *,
    model: Classifier | None,
    hooks: Sequence[PredictHook] | None,
    on_progress: Callable[[ProgressUpdate], None] | None,
    unfinished: dict[str, object] | None = None,
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
    columns = result_columns(model.labels, [c for h in hooks for c in h.columns])
    journal = _journal_for(config, run_fingerprint(config, model, hooks, columns), unfinished)
    try:
        return _score_all(config, model, hooks, rules, ctx, columns, journal, on_progress, t0=t0, started_at=started_at,
                          destination=destination, workers=workers)
    finally:
        if journal is not None:
            journal.close()


def _score_all(config: PredictConfig, model: Classifier, hooks: list[PredictHook], rules: Any, ctx: RunContext,
               columns: list[str], journal: Journal | None, on_progress: Callable[[ProgressUpdate], None] | None, *,
               t0: float, started_at: str, destination: Any, workers: int) -> PredictSummary:
    writer = ResultsWriter(config.out_dir, columns)
    keep_images = any(h.needs_images for h in hooks)
    checks = any(h.needs_image_checks for h in hooks)
    recipe = model.manifest.preprocessing
    needs = pixel_needs(config, model, hooks)
    extra = extra_recipes(hooks)
    paths = discover_paths(config.inputs, config.out_dir)
    window = in_flight_window(config.batch_size, workers, keep_images)
    counter = ProgressCounter(on_progress)
    items: Iterable[Decoded | Finished]
    on_written: Callable[[list[tuple[ImageRecord, dict[str, Any]]]], None] | None = None
    stream: ResumeStream | None = None
    if journal is None:
        tasks = (DecodeTask(i, p, recipe, rules, keep_images, checks, needs, extra) for i, p in enumerate(paths))
        items = decode_stream(tasks, workers=workers, window=window)
    else:
        for entry in journal.entries():  # artefacts keep the names the earlier run gave them
            if entry.stem:
                ctx.stems.reserve(entry.path, entry.stem)
        resume = stream = ResumeStream(paths, journal)
        tasks = (DecodeTask(i, p, recipe, rules, keep_images, checks, needs, extra) for i, p in resume.paths_to_decode())
        items = resume.merge(decode_stream(tasks, workers=workers, window=window))

        def on_written(written: list[tuple[ImageRecord, dict[str, Any]]]) -> None:
            assert journal is not None
            journal.commit([JournalEntry(r.path, resume.identities.pop(r.path, None), row, ctx.stems.assigned(r.path))
                            for r, row in written])

    write_in_batches(
        items, writer, counter, batch_size=config.batch_size,
        process=lambda ok: _score_batch(ok, model, hooks, ctx, extra),
        unreadable=lambda d: _unscored(with_model(d.record, model.manifest), hooks, ctx),
        inputs=config.inputs, on_written=on_written,
    )
    c = counter.counts
    resumed = stream.resumed if stream is not None else 0
    summary = PredictSummary(
        total=writer.rows_written, scored=c[Status.SCORED], excluded=c[Status.EXCLUDED], failed=c[Status.FAILED],
        seconds=time.perf_counter() - t0, results_csv=writer.csv_path,
        results_jsonl=writer.jsonl_path or writer.csv_path,
        model_name=model.manifest.name, model_version=model.manifest.version, device=model.session.device.value,
        resumed=resumed, failures=tuple(counter.failures),
    )
    outcomes = {hook.name: hook.on_finish(ctx, summary) for hook in hooks}
    counts = {"files": summary.total, "scored": summary.scored, "excluded": summary.excluded, "failed": summary.failed}
    if config.resume:
        counts["resumed"] = resumed
    record = run_record(config, model, started_at=started_at, finished_at=utc_now(), counts=counts, hooks=hooks,
                        workers=workers)
    run_json = write_run_json(ctx.out_dir, record)
    report = run_reports(config, ctx.out_dir, destination) if config.reports_on else None
    return dataclasses.replace(summary, seconds=time.perf_counter() - t0, outcomes=outcomes, run_json=run_json,
                               run=record, report=report)


def predict(inputs: str | Path | Sequence[str | Path], out_dir: str | Path, **options: Any) -> PredictSummary:
    """Library entry point: ``cxrtriage.predict("scans/", "results/", model="cxr-classifier")``.

    ``options`` are ``PredictConfig`` fields. Decode workers are separate processes that import the calling script
    again: call this under ``if __name__ == "__main__":`` in a script, or pass ``workers=0``; without the guard a
    ``ConfigError`` says so.
    """
    if importing_main_in_worker():
        raise WorkerStartError(f"cxrtriage.predict was called while a decode worker process was starting: {GUARD_HINT}")
    paths = (inputs,) if isinstance(inputs, str | Path) else tuple(inputs)
    return run_predict(PredictConfig(inputs=tuple(Path(p) for p in paths), out_dir=Path(out_dir), **options))
