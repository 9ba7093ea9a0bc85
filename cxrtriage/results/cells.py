"""Text made safe for the files cxrtriage writes: one set of rules for every CSV, JSONL, HTML and PDF.

Three hazards, three rules, each applied in one place:

- **Control characters from data** (a NUL inside a DICOM UID, an escape sequence in a description) never reach an
  output: ``clean_text`` strips DICOM's trailing NUL/space padding and replaces any other control character by
  U+FFFD. ``ImageRecord`` applies it to every text field it is built with (the record boundary), the report
  header to every DICOM value it shows.
- **Names that are not valid UTF-8**: POSIX file names are bytes; Python hands a name that is not valid UTF-8 over
  as a ``str`` with surrogate escapes (``'M\\udcfcller.png'`` for the Latin-1 bytes ``M\\xfcller.png``), which
  no UTF-8 file can hold. A table row holding such text is written with ``escape_undecodable`` (each such byte
  as ``\\xNN``, each backslash doubled: lossless and valid UTF-8) and its note column ends with
  ``UNDECODABLE_NOTE``; ``decode_row`` gives the original text back. ``display_text`` is the one-way form for
  what people read (HTML, PDF, messages).
- **Formula injection**: a spreadsheet runs a cell that starts with ``=``, ``+``, ``-``, ``@``, TAB or CR as a
  formula. ``spreadsheet_text`` prefixes such a cell (and one that starts with ``'`` itself, so the rule can be
  undone exactly) with ``'``, which spreadsheets show as text; numbers (``-0.5``, ``1e-05``) stay numbers.
  ``spreadsheet_value`` undoes it. Only CSV gets this rule: JSONL is read by programs, not spreadsheets.

``SafeCsvWriter`` / ``read_safe_csv`` apply the last two to whole rows; every CSV cxrtriage writes (results,
segment, worklist, explain) goes through them.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

# C0 controls but TAB/LF/CR (multi-line reasons keep their line breaks), DEL and the C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_PADDING = " \x00"  # DICOM pads values to an even length with a space (text) or a NUL (UI)
REPLACEMENT = "\ufffd"

_SURROGATE = re.compile(r"[\ud800-\udfff]")
UNDECODABLE_NOTE = "text not valid UTF-8: its bytes are written as \\xNN escapes and backslashes doubled"

FORMULA_START = frozenset("=+-@\t\r'")
_NUMBER = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf|nan|infinity)", re.IGNORECASE)


# --------------------------------------------------------------------------- control characters


def clean_text(text: str) -> str:
    """``text`` without DICOM padding (trailing NULs/spaces) and with every other control character (NUL, ESC,
    backspace, DEL, C1...) replaced by U+FFFD; TAB, LF and CR are kept. Text without any is returned unchanged."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(REPLACEMENT, text.rstrip(_PADDING))


def clean_value(value: Any) -> Any:
    """``clean_text`` on a string, on the strings of a list/tuple; anything else unchanged."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list | tuple):
        return type(value)(clean_value(v) for v in value)
    return value


# --------------------------------------------------------------------------- bytes that are not UTF-8


def has_undecodable(text: str) -> bool:
    """True when ``text`` holds surrogates (bytes of a name that is not valid UTF-8): no UTF-8 file can hold it."""
    return bool(_SURROGATE.search(text))


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogate escape of one byte (os.fsdecode): the byte itself
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}"  # any other lone surrogate


def display_text(text: str) -> str:
    """``text`` as people should read it: each undecodable byte as ``\\xNN`` (``M\\xfcller.png``); one way only."""
    return _SURROGATE.sub(lambda m: _escape_char(m.group()), text) if has_undecodable(text) else text


def escape_undecodable(text: str) -> str:
    """Lossless, valid-UTF-8 form of ``text``: backslashes doubled, each undecodable byte ``\\xNN`` (and any other
    lone surrogate ``\\uXXXX``). ``unescape_undecodable`` reverses it."""
    return _SURROGATE.sub(lambda m: _escape_char(m.group()), text.replace("\\", "\\\\"))


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2}|u[0-9a-f]{4})")


def unescape_undecodable(text: str) -> str:
    """The text ``escape_undecodable`` was given."""
    def one(m: re.Match[str]) -> str:
        s = m.group(1)
        if s == "\\":
            return "\\"
        code = int(s[1:], 16)
        return chr(0xDC00 + code) if s[0] == "x" and code >= 0x80 else chr(code)

    return _ESCAPE.sub(one, text)


def _map_text(value: Any, fn: Any) -> Any:
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list | tuple):
        return type(value)(_map_text(v, fn) for v in value)
    return value


def _any_undecodable(values: Iterable[Any]) -> bool:
    for v in values:
        if isinstance(v, str) and has_undecodable(v):
            return True
        if isinstance(v, list | tuple) and _any_undecodable(v):
            return True
    return False


def encode_row(row: Mapping[str, Any], note_column: str) -> dict[str, Any]:
    """``row`` ready for a UTF-8 file: unchanged when its text is valid UTF-8; else every text value escaped
    (``escape_undecodable``) and ``UNDECODABLE_NOTE`` appended to ``note_column`` (``; ``-separated)."""
    if not _any_undecodable(row.values()):
        return dict(row)
    out = {k: _map_text(v, escape_undecodable) for k, v in row.items()}
    note = out.get(note_column)
    out[note_column] = f"{note}; {UNDECODABLE_NOTE}" if note else UNDECODABLE_NOTE
    return out


def decode_row(row: Mapping[str, Any], note_column: str) -> dict[str, Any]:
    """The row ``encode_row`` was given: a row whose ``note_column`` ends with ``UNDECODABLE_NOTE`` is unescaped."""
    note = row.get(note_column)
    if not (isinstance(note, str) and note.endswith(UNDECODABLE_NOTE)):
        return dict(row)
    out = dict(row)
    out[note_column] = note[: -len(UNDECODABLE_NOTE)].removesuffix("; ") or None
    return {k: _map_text(v, unescape_undecodable) for k, v in out.items()}


# --------------------------------------------------------------------------- spreadsheets


def spreadsheet_text(cell: str) -> str:
    """``cell`` as a spreadsheet shows it as text: ``'`` before a cell that starts with ``= + - @``, TAB, CR or
    ``'``, unless the cell is a number (``-0.5`` stays a number)."""
    if cell and cell[0] in FORMULA_START and not _NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


def spreadsheet_value(cell: str) -> str:
    """The value ``spreadsheet_text`` was given."""
    if len(cell) > 1 and cell[0] == "'" and cell[1] in FORMULA_START:
        return cell[1:]
    return cell


class SafeCsvWriter:
    """A ``csv.writer`` whose rows are made safe: text not valid UTF-8 escaped (``encode_row``, noted in
    ``note_column``) and every cell, header included, protected against formula injection."""

    def __init__(self, f: IO[str], columns: Sequence[str], note_column: str) -> None:
        self.columns = list(columns)
        self.note_column = note_column
        self._w = csv.writer(f)
        self._w.writerow([spreadsheet_text(c) for c in self.columns])

    def writerow(self, cells: Mapping[str, str]) -> None:
        """Write one row of already formatted cells (by column; a missing column is an empty cell)."""
        row = encode_row(cells, self.note_column)
        self._w.writerow([spreadsheet_text("" if row.get(c) is None else str(row[c])) for c in self.columns])


def read_safe_csv(f: IO[str], note_column: str) -> tuple[list[str], list[dict[str, str]]]:
    """(columns, rows) of a CSV written by ``SafeCsvWriter``, with every cell as it was before it was made safe.

    A CSV written by hand or by an older version reads the same (its cells are taken as they are).
    """
    reader = csv.reader(f)
    header = [spreadsheet_value(c) for c in next(reader, [])]
    rows: list[dict[str, str]] = []
    for cells in reader:
        if not cells:
            continue
        row = {c: spreadsheet_value(v) for c, v in zip(header, cells, strict=False)}
        for c in header[len(cells):]:
            row[c] = ""
        decoded = decode_row(row, note_column)
        rows.append({k: "" if v is None else v for k, v in decoded.items()})
    return header, rows
