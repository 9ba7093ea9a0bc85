"""Tolerant readers of DICOM element values: a malformed or missing value gives a default, never an exception."""

from __future__ import annotations

from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


def get_text(ds: Dataset | None, keyword: str) -> str:
    """The element's value as stripped text (multiple values joined by ``\\``); "" when absent or unreadable."""
    if ds is None:
        return ""
    try:
        value = ds.get(keyword)
    except Exception:  # pydicom raises on values it cannot convert
        return ""
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v).strip() for v in value)
    return str(value).strip()


def get_int(ds: Dataset, keyword: str, default: int) -> int:
    """The element's (first) value as an int; ``default`` when absent, empty or not a number."""
    try:
        value = ds.get(keyword)
        if isinstance(value, MultiValue | list):
            value = value[0]
        return default if value is None or value == "" else int(value)
    except Exception:
        return default


def get_raw_text(ds: Dataset, keyword: str) -> str | None:
    """The element's value as text, without pydicom's validation; None when absent."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    try:
        elem = ds.get_item(tag)
    except Exception:
        return None
    value = getattr(elem, "value", None)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("ascii", "replace").strip("\x00 ")
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value)


def get_numbers(ds: Dataset, keyword: str) -> list[float] | None:
    """Numeric values of a DS/IS/FD element; None when absent, [] when present but malformed or empty.

    Parsed from the raw text because pydicom refuses a malformed DS as a whole (ValueError on access), and
    the reader must be able to say "malformed" instead of failing.
    """
    raw = get_raw_text(ds, keyword)
    if raw is None:
        return None
    out: list[float] = []
    for part in raw.split("\\"):
        part = part.strip().strip("[]'\" ")
        if not part:
            return []
        try:
            out.append(float(part))
        except ValueError:
            return []
    return out


def transfer_syntax(ds: Dataset) -> str:
    """(0002,0010) TransferSyntaxUID from the file meta; "" when there is none."""
    meta = getattr(ds, "file_meta", None)
    return get_text(meta, "TransferSyntaxUID") if meta is not None else ""
