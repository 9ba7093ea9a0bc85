"""A predict run fed file group by file group as they arrive (``serve``, ``watch``), committed group by group.

The stages are predict's own (``decode_stream`` → ``score_batch`` with the hooks of ``build_hooks``); what differs is
that the run never ends. Each group of files is a *batch*:

1. scored (``score``): decoded, classified, every hook (lungs, heat maps, quality, triage) applied;
2. committed (``commit``): one line in ``OUT/journal.jsonl``, flushed to disk: from then on the batch counts as
   finished whatever happens; then ``results.jsonl`` gets its rows appended and ``results.csv``, ``worklist.csv``
   and ``run.json`` are rewritten atomically, so the worklist on disk always lists every committed study, sorted;
3. published (``publish``): with ``--report``/``--dicom``, the reports of its studies and the DICOM results of its
   images;
4. marked done (``mark_done``) once the caller has also put those DICOM results in its outbox.

On start the results tables are rebuilt from the journal (a crash may have come between 2's commit and its
rewrites), and the batches committed but not done are handed back (``undone``) to be published again.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrtriage.errors import ConfigError
from cxrtriage.model import Classifier, load_classifier
from cxrtriage.pipeline.config import PredictConfig, auto_workers, in_flight_window
from cxrtriage.pipeline.decode import DecodePool, DecodeTask, decode_stream
from cxrtriage.pipeline.engine import score_in_batches, selection_rules, with_model
from cxrtriage.pipeline.hooks.base import PredictSummary, RunContext
from cxrtriage.pipeline.hooks.triage import TriageHook
from cxrtriage.pipeline.journal import JOURNAL_NAME, FileIdentity, Journal, JournalEntry
from cxrtriage.pipeline.provenance import run_record
from cxrtriage.pipeline.reports import run_batch_reports
from cxrtriage.pipeline.scoring import build_hooks, extra_recipes, pixel_needs, run_fingerprint, score_batch, unscored
from cxrtriage.pipeline.startup import prestart
from cxrtriage.results import (
    RESULTS_CSV,
    RESULTS_JSONL,
    RUN_JSON,
    CsvLines,
    ImageRecord,
    Status,
    append_results_jsonl,
    decode_record,
    encode_record,
    result_columns,
    utc_now,
    write_csv_lines,
    write_results_jsonl,
    write_run_json,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Batch:
    """A committed group of files: its number in the journal and its entries (path, identity, row)."""

    number: int
    entries: tuple[JournalEntry, ...]

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.entries]

    def counts(self) -> Counter[str]:
        """Rows by status."""
        return Counter(str(e.row.get("status")) for e in self.entries)

    def studies(self) -> dict[str, list[JournalEntry]]:
        """Entries by study key (the StudyInstanceUID of a DICOM input), in first-seen order."""
        out: dict[str, list[JournalEntry]] = {}
        for e in self.entries:
            out.setdefault(str(e.row.get("study_key") or e.path), []).append(e)
        return out


@dataclass(frozen=True, slots=True)
class Published:
    """What publishing a batch wrote: the DICOM results of its images (to forward), and the problems."""

    dicom_files: tuple[Path, ...] = ()
    errors: tuple[str, ...] = field(default_factory=tuple)


class IncrementalRun:
    """One model, one set of hooks and one results folder, fed batch by batch (see the module docstring).

    Raises on construction what ``run_predict`` raises before scoring (``ModelError``, ``ConfigError``), and
    ``ConfigError`` when the folder holds a run of another command or with other settings.
    """

    def __init__(self, config: PredictConfig, *, command: str, model: Classifier | None = None) -> None:
        self.config = config
        self.command = command
        self.out_dir = Path(config.out_dir)
        self.started_at = utc_now()
        self.workers = auto_workers() if config.workers is None else config.workers
        prestart(self.workers)
        # The decode workers live as long as the run: a node scores batch after batch, often small ones.
        self.pool = DecodePool(self.workers) if self.workers > 0 else None
        self.model = model or load_classifier(config.model, device=config.device, strict_device=config.strict_device,
                                              intra_op_threads=config.intra_op_threads, spinning=False)
        self.hooks = build_hooks(config, self.model)
        self.rules = selection_rules(config.rules)
        self.ctx = RunContext(config=config, model=self.model, out_dir=self.out_dir)
        self.columns = result_columns(self.model.labels, [c for h in self.hooks for c in h.columns])
        self.keep_images = any(h.needs_images for h in self.hooks)
        self.image_checks = any(h.needs_image_checks for h in self.hooks)
        self.needs = pixel_needs(config, self.model, self.hooks)
        self.extra = extra_recipes(self.hooks)
        self.journal = self._open_journal(run_fingerprint(config, self.model, self.hooks, self.columns))
        self.report_labels: dict[str, str] = {}
        self._lines = CsvLines(self.columns)
        # The results table in memory, path -> its latest row, in the order committed (a path scored again moves to
        # the end): the tables are rewritten from it after each batch without reading or formatting them again.
        self._rows: dict[str, _Row] = {}
        try:
            for entry in self.journal.entries():
                if entry.stem:
                    self.ctx.stems.reserve(entry.path, entry.stem)
                self._keep(entry)
            self._rebuild()
        except BaseException:
            self.close()
            raise

    def _open_journal(self, fingerprint: dict[str, Any]) -> Journal:
        hint = f"choose another --out for this `cxrtriage {self.command}`, or run it with the same options as before"
        if (self.out_dir / JOURNAL_NAME).is_file():
            return Journal.open(self.out_dir, self.command, fingerprint, resume_hint=hint)
        found = [n for n in (RESULTS_CSV, RESULTS_JSONL, RUN_JSON) if (self.out_dir / n).exists()]
        if found:
            raise ConfigError(f"{self.out_dir}: holds the results of another run ({', '.join(found)}) and no journal of "
                              f"`cxrtriage {self.command}`; choose another --out")
        return Journal.create(self.out_dir, self.command, fingerprint)

    def warm_up(self) -> None:
        """Start the decode workers and run the model once, so that the first batch waits for neither."""
        if self.pool is not None:
            self.pool.start()
        shape = self.model.manifest.input_shape
        self.model.run(np.zeros((1, *(int(d or 1) for d in shape[1:])), np.float32), features=False)

    def close(self) -> None:
        self.journal.close()
        if self.pool is not None:
            self.pool.close()

    # ------------------------------------------------------------------ what is known

    def finished(self, path: str, identity: FileIdentity | None) -> bool:
        """``path`` was committed as it is now (same size and mtime)."""
        return self.journal.finished(path, identity) is not None

    def committed_paths(self) -> list[str]:
        return list(self._rows)

    def undone(self) -> list[Batch]:
        """Batches committed but not marked done: to be published (and queued for forwarding) again."""
        return [Batch(n, tuple(self.journal.batches[n])) for n in self.journal.undone()]

    @property
    def counts(self) -> Counter[str]:
        """Rows of the results by status."""
        return Counter(r.record.status.value for r in self._rows.values())

    # ------------------------------------------------------------------ the stages

    def score(self, paths: Sequence[str]) -> list[ImageRecord]:
        """Score ``paths`` through predict's stages; one record per path, in order. Nothing is written yet
        (except the artefacts of the hooks: masks, heat maps)."""
        recipe = self.model.manifest.preprocessing
        tasks = (DecodeTask(i, p, recipe, self.rules, self.keep_images, self.image_checks, self.needs, self.extra)
                 for i, p in enumerate(paths))
        window = in_flight_window(self.config.batch_size, self.workers, self.keep_images)
        decoded = decode_stream(tasks, workers=self.workers, window=window, pool=self.pool)
        return score_in_batches(
            decoded, batch_size=self.config.batch_size,
            process=lambda ok: score_batch(ok, self.model, self.hooks, self.ctx, self.extra),
            unreadable=lambda d: unscored(with_model(d.record, self.model.manifest), self.hooks, self.ctx),
        )

    def commit(self, records: Iterable[ImageRecord], identities: Mapping[str, FileIdentity | None]) -> Batch:
        """Journal ``records`` (the commit point), then bring results.jsonl/.csv, worklist.csv and run.json up to date."""
        entries = [JournalEntry(r.path, identities.get(r.path), encode_record(r, self.columns),
                                self.ctx.stems.assigned(r.path)) for r in records]
        number = self.journal.commit(entries)
        batch = Batch(number, tuple(self.journal.batches[number]))
        replaced = any(e.path in self._rows for e in batch.entries)
        for e in batch.entries:
            self._keep(e)
        if replaced:  # a file changed and was scored again: its new row replaces the old one
            write_results_jsonl(self.out_dir / RESULTS_JSONL, self.columns, self._ordered_rows())
        else:
            append_results_jsonl(self.out_dir / RESULTS_JSONL, self.columns, [e.row for e in batch.entries])
        self._write_views()
        return batch

    def publish(self, batch: Batch) -> Published:
        """The reports of the batch's studies and the DICOM results of its images (``--report``/``--dicom``)."""
        if not self.config.reports_on:
            return Published()
        outcome = run_batch_reports(self.config, self.out_dir, batch.paths, self.report_labels)
        files = tuple(outcome.summary.dicom_files) if outcome.summary is not None else ()
        return Published(files, outcome.errors)

    def mark_done(self, batch: Batch) -> None:
        self.journal.mark_done(batch.number)

    # ------------------------------------------------------------------ the results views

    def _keep(self, entry: JournalEntry) -> None:
        """``entry``'s row as the latest of its path (at the end of the table)."""
        self._rows.pop(entry.path, None)
        record = decode_record(entry.row, where=f"{self.journal.path}, batch {entry.batch}")
        self._rows[entry.path] = _Row(entry.row, self._lines.line(entry.row), record)

    def _ordered_rows(self) -> list[Mapping[str, Any]]:
        """The results rows: the latest of each path, in the order they were committed."""
        return [r.row for r in self._rows.values()]

    def _rebuild(self) -> None:
        """All views from the journal (on start: a crash may have cut a rewrite or an append short)."""
        write_results_jsonl(self.out_dir / RESULTS_JSONL, self.columns, self._ordered_rows())
        self._write_views()

    def _write_views(self) -> None:
        t0 = time.perf_counter()
        csv_path = write_csv_lines(self.out_dir / RESULTS_CSV, self._lines.header,
                                   (r.line for r in self._rows.values()))
        records = [r.record for r in self._rows.values()]
        counts = self.counts
        summary = PredictSummary(
            total=len(records), scored=counts[Status.SCORED.value], excluded=counts[Status.EXCLUDED.value],
            failed=counts[Status.FAILED.value], seconds=0.0, results_csv=csv_path,
            results_jsonl=self.out_dir / RESULTS_JSONL, model_name=self.model.manifest.name,
            model_version=self.model.manifest.version, device=self.model.session.device.value,
        )
        for hook in self.hooks:
            if isinstance(hook, TriageHook):  # the worklist, from the table in memory (never read back from disk)
                hook.finish(self.ctx, records)
            elif records:
                hook.on_finish(self.ctx, summary)
        record = run_record(self.config, self.model, started_at=self.started_at, finished_at=utc_now(),
                            counts={"files": summary.total, "scored": summary.scored, "excluded": summary.excluded,
                                    "failed": summary.failed, "batches": len(self.journal.batches)},
                            hooks=self.hooks)
        write_run_json(self.out_dir, record.merged({"command": self.command}))
        log.debug("results views rewritten in %.3f s (%d rows)", time.perf_counter() - t0, len(records))


@dataclass(frozen=True, slots=True)
class _Row:
    """One row of the results: as journaled, as its CSV line, and as a record (for the worklist)."""

    row: Mapping[str, Any]
    line: str
    record: ImageRecord
