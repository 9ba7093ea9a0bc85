"""Results tables: ``ImageRecord``s to and from ``results.csv`` / ``results.jsonl`` (and ``segment.csv``).

The header is fixed per run: the lead columns, one ``score_<label>`` per model label, the model and
triage columns, the source columns (DICOM facts for monitoring), then the columns of the pipeline hooks that ran.
Rows are written as they complete into ``*.partial`` files (flushed per batch) which ``close()`` renames into
place atomically; a run that crashes leaves only ``*.partial`` files, never a half-written ``results.csv``.

What a cell may hold is ``cxrtriage.results.cells``'s to decide: a row whose text is not valid UTF-8 (a file
name in Latin-1 bytes) is escaped and says so in its ``reason``, CSV cells are protected against formula
injection; ``read_results`` undoes both, so a record reads back as it was written.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cxrtriage.errors import InputError, OutputError
from cxrtriage.files import AtomicOutput, atomic_output
from cxrtriage.results.cells import SafeCsvWriter, decode_row, encode_row, read_safe_csv
from cxrtriage.results.record import FIELD_NAMES, ImageRecord, LabelArea, Priority, Status

log = logging.getLogger(__name__)

RESULTS_CSV = "results.csv"
RESULTS_JSONL = "results.jsonl"
SCORE_PREFIX = "score_"
MODEL_SCORE_PREFIX = "model_score_"  # the model's own score when a site file rewrote score_<label>

# The fixed columns of every results table; score columns follow LEAD_COLUMNS.
LEAD_COLUMNS: tuple[str, ...] = (
    "path", "status", "reason", "input_kind", "study_key", "study_instance_uid", "series_instance_uid",
    "sop_instance_uid", "view", "rows", "columns", "pixel_spacing_mm",
)
TAIL_COLUMNS: tuple[str, ...] = ("model_name", "model_version", "model_sha256", "model_integrity", "priority",
                                 "priority_reason", "site_file")
# Where each image came from (DICOM headers; empty for other files), after the tail so that every earlier column keeps
# its position; ``cxrtriage monitor`` slices by them.
SOURCE_COLUMNS: tuple[str, ...] = ("manufacturer", "device_model", "institution", "study_month", "age_band", "sex")
# How far the image was reduced when it was read (`ImageRecord.decoded_at`), after the source columns.
DECODE_COLUMNS: tuple[str, ...] = ("decoded_at",)
# The column that says when a row's text had to be escaped (``cells.UNDECODABLE_NOTE``).
NOTE_COLUMN = "reason"
# Artefact columns, in this order when present (added by pipeline hooks).
OPTIONAL_COLUMNS: tuple[str, ...] = ("heatmaps", "outside_lungs", "shortcut", "mask_path", "lung_area_mm2", "lung_area_px")

# Record fields written under their own name; the mappings (scores, areas, extra) have columns of their own.
_PLAIN_FIELDS = frozenset(FIELD_NAMES) - {"scores", "model_scores", "label_areas", "extra", "outside_lungs"}
SHARES_COLUMN = "outside_lungs"  # a mapping finding -> share: "label=0.62;label=0.21" in CSV, an object in JSONL
_INT_FIELDS = frozenset({"rows", "columns", "lung_area_px"})
_FLOAT_FIELDS = frozenset({"priority_score", "lung_area_mm2", "patient_age", "population_probability"})


def score_column(label: str) -> str:
    return f"{SCORE_PREFIX}{label}"


def model_score_column(label: str) -> str:
    return f"{MODEL_SCORE_PREFIX}{label}"


def result_columns(labels: Sequence[str], extra: Iterable[str] = ()) -> list[str]:
    """The header: fixed columns, one score column per label, model/triage columns, then hook columns."""
    cols = [*LEAD_COLUMNS, *(score_column(lab) for lab in labels), *TAIL_COLUMNS, *SOURCE_COLUMNS, *DECODE_COLUMNS]
    extra = list(dict.fromkeys(extra))
    cols += [c for c in OPTIONAL_COLUMNS if c in extra]
    cols += [c for c in extra if c not in cols]
    return cols


def segment_columns(labels: Sequence[str]) -> list[str]:
    """Header of ``segment.csv``: per-label pixel and mm² columns for each non-background label."""
    per_label = [c for lab in labels[1:] for c in (f"{lab}_px", f"{lab}_mm2")]
    return ["path", "status", "reason", "input_kind", "study_key", "sop_instance_uid", "rows", "columns",
            "pixel_spacing_mm", "mask_path", "lung_area_px", "lung_area_mm2", *per_label,
            "model_name", "model_version", "model_sha256", "model_integrity"]


# --------------------------------------------------------------------------- record -> cells


def column_value(record: ImageRecord, column: str) -> Any:
    """The value of ``column`` for ``record`` (None when the record has none)."""
    if column in _PLAIN_FIELDS:
        return getattr(record, column)
    if column == SHARES_COLUMN:
        return dict(record.outside_lungs) or None
    if column.startswith(MODEL_SCORE_PREFIX):
        return record.model_scores.get(column[len(MODEL_SCORE_PREFIX):])
    if column.startswith(SCORE_PREFIX):
        return record.scores.get(column[len(SCORE_PREFIX):])
    if column in record.extra:
        return record.extra[column]
    for suffix in ("_px", "_mm2"):
        area = record.label_areas.get(column[: -len(suffix)]) if column.endswith(suffix) else None
        if area is not None:
            return area.px if suffix == "_px" else area.mm2
    return None


def _unwritten(record: ImageRecord, columns: Sequence[str]) -> list[str]:
    """Values of ``record`` that have no column in ``columns`` (they would be lost)."""
    have = set(columns)
    lost = [score_column(lab) for lab, v in record.scores.items() if v is not None and score_column(lab) not in have]
    lost += [model_score_column(lab) for lab, v in record.model_scores.items()
             if v is not None and model_score_column(lab) not in have]
    lost += [k for k in record.extra if k not in have]
    lost += [SHARES_COLUMN] if record.outside_lungs and SHARES_COLUMN not in have else []
    return lost


def csv_cell(value: Any) -> str:
    """CSV cell: empty for None/NaN, ';'-joined for lists/tuples (``key=value`` items for mappings), 6 significant
    digits for floats.

    The formula-injection guard is applied to the finished cell by ``SafeCsvWriter`` (numbers are left alone)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, ".6g")
    if isinstance(value, list | tuple):
        return ";".join(csv_cell(v) for v in value)
    if isinstance(value, Mapping):
        return ";".join(f"{k}={csv_cell(v)}" for k, v in value.items())
    return str(value)


def json_value(value: Any) -> Any:
    """JSON value: non-finite floats become null, tuples lists, paths strings, numpy scalars Python numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_value(value.item())
    return value


def to_row(record: ImageRecord, columns: Sequence[str]) -> dict[str, Any]:
    """The record as a row of ``columns`` (JSON-ready values)."""
    return {c: json_value(column_value(record, c)) for c in columns}


# --------------------------------------------------------------------------- cells -> record


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


def _float(v: Any) -> float | None:
    if v is None or v == "":
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _int(v: Any) -> int | None:
    f = _float(v)
    return None if f is None or not math.isfinite(f) else int(f)


def _items(v: Any) -> list[Any] | None:
    """A list cell: a JSON list, or a ';'-separated CSV cell."""
    if v is None or v == "":
        return None
    if isinstance(v, list | tuple):
        return list(v)
    return [p for p in str(v).split(";") if p.strip()]


def _shares(v: Any) -> dict[str, float]:
    """An ``outside_lungs`` cell: a JSON object, or ``label=share`` items separated by ';' (CSV)."""
    if v is None or v == "":
        return {}
    items = v.items() if isinstance(v, Mapping) else (p.split("=", 1) for p in str(v).split(";") if "=" in p)
    out: dict[str, float] = {}
    for k, x in items:
        f = _float(x)
        if f is not None:
            out[str(k).strip()] = f
    return out


def from_row(row: Mapping[str, Any], *, where: str = "results row") -> ImageRecord:
    """Parse one results row (CSV strings or JSON values) into an ``ImageRecord``.

    Raises:
        InputError: no ``path``, or a ``status``/``priority`` outside the known values; ``where`` names the row.
    """
    path = _text(row.get("path"))
    if not path:
        raise InputError(f"{where}: no 'path'; is this a results table written by `cxrtriage predict`?")
    try:
        status = Status(str(row.get("status", "")).strip())
    except ValueError:
        raise InputError(f"{where}: status {row.get('status')!r} is not one of {[s.value for s in Status]}") from None
    raw_priority = str(row.get("priority") or "").strip()
    try:
        priority = Priority(raw_priority) if raw_priority else None
    except ValueError:
        raise InputError(f"{where}: priority {raw_priority!r} is not one of {[p.value for p in Priority]}") from None
    values: dict[str, Any] = {}
    scores: dict[str, float | None] = {}
    model_scores: dict[str, float | None] = {}
    areas: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}
    shares = _shares(row.get(SHARES_COLUMN))
    for key, v in row.items():
        if key in ("path", "status", "priority", SHARES_COLUMN):
            continue
        if key in _INT_FIELDS:
            values[key] = _int(v)
        elif key in _FLOAT_FIELDS:
            values[key] = _float(v)
        elif key == "pixel_spacing_mm":
            items = _items(v)
            values[key] = (float(items[0]), float(items[1])) if items and len(items) == 2 else None
        elif key == "heatmaps":
            items = _items(v)
            values[key] = None if items is None else tuple(str(x) for x in items)
        elif key in _PLAIN_FIELDS:
            values[key] = _text(v) if v != "" else None  # an empty cell is "not known"
        elif key.startswith(MODEL_SCORE_PREFIX):
            model_scores[key[len(MODEL_SCORE_PREFIX):]] = _float(v)
        elif key.startswith(SCORE_PREFIX):
            scores[key[len(SCORE_PREFIX):]] = _float(v)
        elif key.endswith("_px") or key.endswith("_mm2"):
            label, kind = key.rsplit("_", 1)
            areas.setdefault(label, {})[kind] = v
        else:
            extra[key] = v
    label_areas = {lab: LabelArea(px=_int(a.get("px")) or 0, mm2=_float(a.get("mm2"))) for lab, a in areas.items()
                   if _int(a.get("px")) is not None}
    return ImageRecord(path=path, status=status, priority=priority, scores=scores, model_scores=model_scores,
                       label_areas=label_areas, outside_lungs=shares, extra=extra, **values)


# --------------------------------------------------------------------------- writing


def encode_record(record: ImageRecord, columns: Sequence[str]) -> dict[str, Any]:
    """The row of ``record`` as both results files hold it: its ``columns``, text that UTF-8 cannot hold (a file
    name in Latin-1 bytes) escaped losslessly (``cells.encode_row``).

    Raises:
        ValueError: the record has a value with no column in ``columns`` (it would be lost from the table).
    """
    lost = _unwritten(record, columns)
    if lost:
        raise ValueError(f"{record.path}: values for {sorted(lost)} have no column in this results table")
    return encode_row(to_row(record, columns), NOTE_COLUMN)


def jsonl_line(row: Mapping[str, Any], columns: Sequence[str]) -> str:
    """One line of ``results.jsonl`` for an encoded row (keys in column order)."""
    return json.dumps({c: row.get(c) for c in columns}, ensure_ascii=False) + "\n"


def write_results_csv(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write a whole ``results.csv`` atomically from encoded rows (a results table kept up to date run after run
    of new rows, e.g. by ``cxrtriage serve``: readers see the previous table or the new one, never half of one)."""
    p = Path(path)
    with atomic_output(p) as f:
        w = SafeCsvWriter(f, list(columns), note_column=NOTE_COLUMN)
        for row in rows:
            w.writerow({c: csv_cell(row.get(c)) for c in columns})
    return p


def write_results_jsonl(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write a whole ``results.jsonl`` atomically from encoded rows."""
    p = Path(path)
    with atomic_output(p) as f:
        for row in rows:
            f.write(jsonl_line(row, columns))
    return p


def append_results_jsonl(path: str | Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Append encoded rows to ``results.jsonl`` (whoever appends keeps a journal from which the file can be
    rebuilt after a crash: an append is not atomic).

    Raises:
        OutputError: the file cannot be written (the disk is full?).
    """
    p = Path(path)
    try:
        with open(p, "a", encoding="utf-8", newline="") as f:
            f.write("".join(jsonl_line(r, columns) for r in rows))
    except OSError as exc:
        raise OutputError(f"{p}: appending results failed ({exc.strerror or exc}); is the disk full?") from exc


class ResultsWriter:
    """Write records to ``DIR/results.csv`` and ``DIR/results.jsonl`` (same columns, same order).

    Use as a context manager: a clean exit renames the partial files into place; an exception leaves
    them as ``*.partial`` for inspection.
    """

    def __init__(self, out_dir: str | Path, columns: Sequence[str], *, csv_name: str = RESULTS_CSV,
                 jsonl_name: str | None = RESULTS_JSONL) -> None:
        self.out_dir = Path(out_dir)
        self.columns = list(columns)
        self.csv_path = self.out_dir / csv_name
        self.jsonl_path = None if jsonl_name is None else self.out_dir / jsonl_name
        self.rows_written = 0
        self._outputs: list[AtomicOutput[str]] = [atomic_output(self.csv_path, keep_on_error=True)]
        if self.jsonl_path is not None:
            self._outputs.append(atomic_output(self.jsonl_path, keep_on_error=True))
        try:
            files = [o.open() for o in self._outputs]
        except OutputError as exc:
            for o in self._outputs:
                o.abort(keep=False)
            raise OutputError(f"{self.out_dir}: cannot write results here ({exc}); choose another --out folder or fix "
                              "its permissions") from exc
        self._jsonl: IO[str] | None = files[1] if len(files) > 1 else None
        self._files = files
        try:
            self._csv = SafeCsvWriter(files[0], self.columns, note_column=NOTE_COLUMN)
        except OSError as exc:
            self.abort(remove=True)
            raise OutputError(f"{self.out_dir}: writing results failed ({exc.strerror or exc}); is the disk full?") from exc

    def write(self, record: ImageRecord) -> dict[str, Any]:
        """Append one record and return its row as written (``encode_record``); a value without a column is an
        error (it would be lost from the table)."""
        row = encode_record(record, self.columns)
        self.write_row(row)
        return row

    def write_row(self, row: Mapping[str, Any]) -> None:
        """Append a row made by ``encode_record`` (e.g. one an earlier run wrote, kept in its journal)."""
        try:
            self._csv.writerow({c: csv_cell(row.get(c)) for c in self.columns})
            if self._jsonl is not None:
                self._jsonl.write(jsonl_line(row, self.columns))
        except OSError as exc:
            raise OutputError(f"{self.out_dir}: writing results failed ({exc.strerror or exc}); is the disk full?") from exc
        self.rows_written += 1

    def flush(self) -> None:
        try:
            for f in self._files:
                f.flush()
        except OSError as exc:
            raise OutputError(f"{self.out_dir}: writing results failed ({exc.strerror or exc}); is the disk full?") from exc

    def close(self) -> None:
        """Finish both files (fsync) and move them into place atomically."""
        for o in self._outputs:
            o.commit()

    def abort(self, *, remove: bool = False) -> None:
        """Close without renaming; ``remove`` deletes the partial files too."""
        for o in self._outputs:
            o.abort(keep=not remove)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class ResultsTable:
    """A results file read back: its columns, the model labels (from the score columns) and the records."""

    path: Path
    columns: tuple[str, ...]
    records: tuple[ImageRecord, ...]
    notes: tuple[str, ...] = ()  # e.g. a last line cut short while a run was still writing (``growing=True``)

    @property
    def labels(self) -> tuple[str, ...]:
        """Model labels, in column order (``score_<label>`` columns)."""
        return tuple(c[len(SCORE_PREFIX):] for c in self.columns if c.startswith(SCORE_PREFIX))

    def __len__(self) -> int:
        return len(self.records)

    def distinct(self, field_name: str, *, scored_only: bool = False) -> list[str]:
        """The distinct non-empty values of a text field (e.g. ``model_sha256``), sorted."""
        vals = {str(getattr(r, field_name) or "").strip() for r in self.records if r.scored or not scored_only}
        return sorted(vals - {""})


def read_results(path: str | Path, *, growing: bool = False) -> ResultsTable:
    """Read ``results.csv`` or ``results.jsonl`` (by suffix; ``results.jsonl.partial`` too) as written by
    ``cxrtriage predict``.

    ``growing``: the JSONL file may still be being written (a run in progress, or a file a site appends to): a last
    line without its newline that is not valid JSON is left out, and ``notes`` says so.

    Raises:
        InputError: the file is missing, unreadable, not a results table, or a row is malformed (file and
            line named).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: results file not found; run `cxrtriage predict ... --out DIR` first")
    notes: list[str] = []
    try:
        if p.name.lower().endswith((".jsonl", ".jsonl.partial")):
            rows: list[tuple[int, dict[str, Any]]] = []
            columns: dict[str, None] = {}
            text = p.read_text(encoding="utf-8")
            lines = text.splitlines()
            for n, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    if growing and n == len(lines) and not text.endswith("\n"):
                        notes.append(f"{p}:{n}: last line incomplete (still being written): left out")
                        continue
                    raise InputError(f"{p}:{n}: not valid JSON ({exc}); the results file is damaged") from exc
                if not isinstance(row, dict):
                    raise InputError(f"{p}:{n}: a results line must be a JSON object")
                columns.update(dict.fromkeys(row))
                rows.append((n, decode_row(row, NOTE_COLUMN)))
            header = list(columns)
        else:
            with open(p, newline="", encoding="utf-8-sig") as f:
                header, csv_rows = read_safe_csv(f, NOTE_COLUMN)
            rows = [(n, dict(r)) for n, r in enumerate(csv_rows, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{p}: cannot read the results ({exc})") from exc
    for col in ("path", "status"):
        if col not in header:
            raise InputError(f"{p}: results have no '{col}' column; is this a results file written by `cxrtriage predict`?")
    records = tuple(from_row(r, where=f"{p}:{n}") for n, r in rows)
    return ResultsTable(path=p, columns=tuple(header), records=records, notes=tuple(notes))


def results_file(path: str | Path) -> Path:
    """``path`` when it is a results file; for an output folder, its ``results.jsonl``, else its ``results.csv``.

    Raises:
        InputError: a folder that holds neither.
    """
    p = Path(path)
    if not p.is_dir():
        return p
    for name in (RESULTS_JSONL, RESULTS_CSV):
        if (p / name).is_file():
            return p / name
    raise InputError(f"{p}: neither {RESULTS_JSONL} nor {RESULTS_CSV} found; point at the --out folder of "
                     "`cxrtriage predict`")


def read_results_dir(results_dir: str | Path) -> ResultsTable:
    """The results of an output folder: ``results.jsonl`` (typed values), else ``results.csv``."""
    d = Path(results_dir)
    if not d.is_dir():
        raise InputError(f"{d}: neither {RESULTS_JSONL} nor {RESULTS_CSV} found; point at the --out folder of "
                         "`cxrtriage predict`")
    return read_results(results_file(d))
