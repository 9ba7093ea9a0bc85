"""The results tables of a run kept in memory row by row and rewritten whole (``serve``, ``watch``: after each batch)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cxrtriage.files import atomic_output
from cxrtriage.results.cells import SafeCsvWriter, decode_row
from cxrtriage.results.record import ImageRecord
from cxrtriage.results.table import NOTE_COLUMN, csv_cell, from_row


def decode_record(row: Mapping[str, Any], *, where: str = "results row") -> ImageRecord:
    """The record an encoded row (``encode_record``, a line of ``results.jsonl``) reads back as."""
    return from_row(decode_row(row, NOTE_COLUMN), where=where)


class CsvLines:
    """The lines of ``results.csv``, one encoded row at a time, exactly as ``ResultsWriter`` writes them.

    For a table rewritten whole after every batch of new rows (``cxrtriage serve``): the lines of the rows already
    in it are kept, not formatted again each time.
    """

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self._buf = io.StringIO()
        self._w = SafeCsvWriter(self._buf, self.columns, note_column=NOTE_COLUMN)
        self.header = self._take()

    def _take(self) -> str:
        text = self._buf.getvalue()
        self._buf.seek(0)
        self._buf.truncate()
        return text

    def line(self, row: Mapping[str, Any]) -> str:
        """The CSV line (with its line end) of an encoded row."""
        self._w.writerow({c: csv_cell(row.get(c)) for c in self.columns})
        return self._take()


def write_csv_lines(path: str | Path, header: str, lines: Iterable[str]) -> Path:
    """Write a whole CSV atomically from its header and lines (made by ``CsvLines``): readers see the previous table
    or the new one, never half of one."""
    p = Path(path)
    with atomic_output(p) as f:
        f.write(header)
        f.writelines(lines)
    return p
