"""The batching engine shared by predict and segment: inputs → decoded items → batches → records, in order."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.errors import InputError
from cxrtriage.io import SelectionRules, discover, load_rules
from cxrtriage.model import ModelManifest
from cxrtriage.outdir import check_out_is_not_an_input
from cxrtriage.pipeline.decode import Decoded
from cxrtriage.results import ImageRecord, ResultsWriter, Status


@dataclass(frozen=True, slots=True)
class ProgressUpdate:
    done: int
    scored: int
    excluded: int
    failed: int
    elapsed: float


class ProgressCounter:
    """Counts records by status and reports each one to an optional callback."""

    # Failed inputs named in the summary: enough to see what went wrong without opening the results; the rest are
    # in the results' reason column.
    FAILURES_KEPT = 3

    def __init__(self, callback: Callable[[ProgressUpdate], None] | None) -> None:
        self.callback = callback
        self.t0 = time.perf_counter()
        self.counts: Counter[Status] = Counter(dict.fromkeys(Status, 0))
        self.failures: list[tuple[str, str]] = []  # (path, reason) of the first failed inputs

    def add(self, status: Status, path: str = "", reason: str | None = None) -> None:
        self.counts[status] += 1
        if status is Status.FAILED and len(self.failures) < self.FAILURES_KEPT:
            self.failures.append((path, reason or "no reason recorded"))
        if self.callback is not None:
            c = self.counts
            self.callback(ProgressUpdate(c.total(), c[Status.SCORED], c[Status.EXCLUDED], c[Status.FAILED],
                                         time.perf_counter() - self.t0))


@dataclass(frozen=True, slots=True)
class Finished:
    """An input that an earlier run finished (``predict --resume``): its results row as that run wrote it."""

    path: str
    row: Mapping[str, Any]

    @property
    def status(self) -> Status:
        return Status(str(self.row.get("status")))


def with_model(record: ImageRecord, manifest: ModelManifest) -> ImageRecord:
    """``record`` stamped with the model that produced (or would have produced) its result."""
    return record.replace(model_name=manifest.name, model_version=manifest.version, model_sha256=manifest.sha256,
                          model_integrity=manifest.integrity or None)


def check_inputs(inputs: Sequence[Path], out_dir: Path | None = None) -> None:
    """Before anything is written: raise ``InputError`` naming every input that does not exist, and
    ``ConfigError`` when ``out_dir`` is itself one of the input folders."""
    missing = [str(p) for p in inputs if not Path(p).exists()]
    if missing:
        raise InputError(f"input not found: {', '.join(missing)}; check the path(s)")
    if out_dir is not None:
        check_out_is_not_an_input(out_dir, inputs)


def discover_paths(inputs: Iterable[Path], out_dir: Path | None = None) -> Iterator[str]:
    """Every input file under ``inputs`` (files as given, folders walked), streamed; never a file under
    ``out_dir`` or under any other folder that holds a cxrtriage run (outputs are never inputs)."""
    for p in discover(list(inputs), exclude=() if out_dir is None else (out_dir,)):
        yield str(p)


def selection_rules(path: Path | None) -> SelectionRules:
    """The selection rules of a run: the TOML file given, else the built-in frontal-CXR rules."""
    return load_rules(path) if path is not None else SelectionRules()


def write_in_batches(
    decoded: Iterable[Decoded | Finished],
    writer: ResultsWriter,
    counter: ProgressCounter,
    *,
    batch_size: int,
    process: Callable[[list[Decoded]], Sequence[ImageRecord]],
    unreadable: Callable[[Decoded], ImageRecord],
    inputs: Sequence[Path],
    on_written: Callable[[list[tuple[ImageRecord, dict[str, Any]]]], None] | None = None,
) -> None:
    """Write one record per decoded item, in input order, running ``process`` on batches of readable items.

    A batch closes when it holds ``batch_size`` readable items; an excluded/failed item with nothing
    waiting before it is written at once. A ``Finished`` item (an input an earlier run scored) is written as it is.
    After each flush ``on_written`` gets the records written by this run with their rows (``predict --resume``
    journals them). The writer is closed (atomic rename) at the end, or aborted on
    any error or interrupt (the rows written so far stay in the ``*.partial`` files, and ``decoded`` is
    closed so that its worker processes stop at once); ``InputError`` when there was no input file at all.
    """
    pending: list[Decoded | Finished] = []  # items waiting for a full batch, in input order

    def flush() -> None:
        ok = [d for d in pending if isinstance(d, Decoded) and d.ok]
        done = iter(process(ok) if ok else [])
        written: list[tuple[ImageRecord, dict[str, Any]]] = []
        for d in pending:
            if isinstance(d, Finished):
                writer.write_row(d.row)
                counter.add(d.status, d.path, str(d.row.get("reason") or "") or None)
                continue
            record = next(done) if d.ok else unreadable(d)
            written.append((record, writer.write(record)))
            counter.add(record.status, record.path, record.reason)
        writer.flush()
        pending.clear()
        if on_written is not None and written:
            on_written(written)

    try:
        n_ok = 0
        for d in decoded:
            pending.append(d)
            n_ok += isinstance(d, Decoded) and d.ok
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
        # Stop the decode workers now (an interrupt, an error): not whenever the stream happens to be collected.
        close = getattr(decoded, "close", None)
        if close is not None:
            close()
        raise


def score_in_batches(
    decoded: Iterable[Decoded],
    *,
    batch_size: int,
    process: Callable[[list[Decoded]], Sequence[ImageRecord]],
    unreadable: Callable[[Decoded], ImageRecord],
) -> list[ImageRecord]:
    """The records of ``decoded``, in order, with ``process`` run on batches of ``batch_size`` readable items (the
    batching of ``write_in_batches``, for callers that write the records themselves: ``serve``, ``watch``)."""
    records: list[ImageRecord] = []
    pending: list[Decoded] = []

    def flush() -> None:
        ok = [d for d in pending if d.ok]
        done = iter(process(ok) if ok else [])
        records.extend(next(done) if d.ok else unreadable(d) for d in pending)
        pending.clear()

    try:
        for d in decoded:
            pending.append(d)
            if sum(1 for p in pending if p.ok) >= batch_size:
                flush()
        flush()
    except BaseException:
        close = getattr(decoded, "close", None)
        if close is not None:
            close()
        raise
    return records
