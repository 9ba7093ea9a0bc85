"""The results table: one row per input file, in CSV and JSONL, written crash-safely.

Rows go to ``results.csv.partial`` / ``results.jsonl.partial`` as they complete (flushed per
batch) and both files are renamed atomically to their final names by ``close()``; a run that
crashes leaves only ``*.partial`` files, never a half-written ``results.csv``.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from cxrtriage.errors import OutputError

RESULTS_CSV = "results.csv"
RESULTS_JSONL = "results.jsonl"
PARTIAL_SUFFIX = ".partial"

# The fixed columns of every results table (common contract); score columns follow LEAD_COLUMNS.
LEAD_COLUMNS: tuple[str, ...] = (
    "path",
    "status",
    "reason",
    "input_kind",
    "study_key",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "view",
    "rows",
    "columns",
    "pixel_spacing_mm",
)
TAIL_COLUMNS: tuple[str, ...] = (
    "model_name",
    "model_version",
    "model_sha256",
    "priority",
    "priority_reason",
    "site_file",
)
# Optional artefact columns, in this order when present (added by pipeline extensions).
OPTIONAL_COLUMNS: tuple[str, ...] = ("heatmaps", "mask_path", "lung_area_mm2", "lung_area_px")

STATUSES = ("scored", "excluded", "failed")


def score_column(label: str) -> str:
    return f"score_{label}"


def result_columns(labels: Sequence[str], extra: Iterable[str] = ()) -> list[str]:
    """The header: fixed columns, one score column per label, model/triage columns, then extras."""
    cols = [*LEAD_COLUMNS, *(score_column(lab) for lab in labels), *TAIL_COLUMNS]
    extra = list(dict.fromkeys(extra))
    cols += [c for c in OPTIONAL_COLUMNS if c in extra]
    cols += [c for c in extra if c not in cols]
    return cols


def _csv_value(value: Any) -> str:
    """CSV cell: empty for None, ';'-joined for lists/tuples, 6 significant digits for floats."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else format(value, ".6g")
    if isinstance(value, list | tuple):
        return ";".join(_csv_value(v) for v in value)
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return _json_value(value.item())
    return value


class ResultsWriter:
    """Write result rows to ``DIR/results.csv`` and ``DIR/results.jsonl`` (same keys, same order).

    Use as a context manager: a clean exit renames the partial files into place; an exception
    leaves them as ``*.partial`` for inspection.
    """

    def __init__(
        self,
        out_dir: str | Path,
        columns: Sequence[str],
        *,
        csv_name: str = RESULTS_CSV,
        jsonl_name: str | None = RESULTS_JSONL,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.columns = list(columns)
        self.csv_path = self.out_dir / csv_name
        self.jsonl_path = None if jsonl_name is None else self.out_dir / jsonl_name
        self._csv_tmp = self.out_dir / (csv_name + PARTIAL_SUFFIX)
        self._jsonl_tmp = None if jsonl_name is None else self.out_dir / (jsonl_name + PARTIAL_SUFFIX)
        self.rows_written = 0
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._csv_f: IO[str] = open(self._csv_tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115
            self._jsonl_f: IO[str] | None = (
                None if self._jsonl_tmp is None else open(self._jsonl_tmp, "w", encoding="utf-8")  # noqa: SIM115
            )
        except OSError as exc:
            raise OutputError(
                f"{self.out_dir}: cannot write results here ({exc.strerror or exc}); choose another --out folder "
                "or fix its permissions"
            ) from exc
        self._csv = csv.writer(self._csv_f)
        self._csv.writerow(self.columns)
        self._closed = False

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row; keys outside the header are an error (they would be lost from the CSV)."""
        unknown = set(row) - set(self.columns)
        if unknown:
            raise ValueError(f"result row has columns {sorted(unknown)} that are not in the header")
        if row.get("status") not in STATUSES:
            raise ValueError(f"result row status must be one of {STATUSES}, got {row.get('status')!r}")
        try:
            self._csv.writerow([_csv_value(row.get(c)) for c in self.columns])
            if self._jsonl_f is not None:
                self._jsonl_f.write(json.dumps({c: _json_value(row.get(c)) for c in self.columns}, ensure_ascii=False) + "\n")
        except OSError as exc:
            raise OutputError(f"{self.out_dir}: writing results failed ({exc.strerror or exc}); is the disk full?") from exc
        self.rows_written += 1

    @property
    def _files(self) -> list[IO[str]]:
        return [f for f in (self._csv_f, self._jsonl_f) if f is not None]

    def flush(self) -> None:
        try:
            for f in self._files:
                f.flush()
        except OSError as exc:
            raise OutputError(f"{self.out_dir}: writing results failed ({exc.strerror or exc}); is the disk full?") from exc

    def close(self) -> None:
        """Finish both files and move them into place atomically."""
        if self._closed:
            return
        self._closed = True
        try:
            for f in self._files:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            os.replace(self._csv_tmp, self.csv_path)
            if self._jsonl_tmp is not None and self.jsonl_path is not None:
                os.replace(self._jsonl_tmp, self.jsonl_path)
        except OSError as exc:
            raise OutputError(f"{self.out_dir}: could not finish the results files ({exc.strerror or exc})") from exc

    def abort(self, *, remove: bool = False) -> None:
        """Close without renaming; ``remove`` deletes the partial files too."""
        if self._closed:
            return
        self._closed = True
        for f in self._files:
            f.close()
        if remove:
            for p in (self._csv_tmp, self._jsonl_tmp):
                if p is not None:
                    p.unlink(missing_ok=True)

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_results_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a results.jsonl back (for reports, worklists and tests)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
