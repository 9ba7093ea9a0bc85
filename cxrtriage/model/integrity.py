"""The manifest's seal: a sha256 over its whole content, so that an edit of any field is noticed.

The ``sha256`` field of a manifest covers the ONNX file only; the thresholds, calibration, labels,
preprocessing and paths that decide every result live in the manifest itself. The ``integrity`` field
seals them::

    "integrity": {"sha256": "<64 hex>", "fields": {"thresholds": "<16 hex>", "thresholds.pneumonia": ..., ...}}

``integrity.sha256`` is the sha256 of the manifest's canonical JSON without the ``integrity`` field:
``json.dumps(data, sort_keys=True, separators=(",", ":"))`` (ASCII, numbers as Python writes them), UTF-8.
It covers the ONNX file's ``sha256`` too, so one value names the network and everything the manifest says
about it. Canonical JSON, not the file's bytes, so that re-indenting, reordering keys or a checkout that
converts line endings does not break the seal while any change of a value does.

``integrity.fields`` holds shortened digests of each top-level field and of each entry of a field that is
an object (``thresholds.pneumonia``, ``calibration.a``...). They decide nothing; they let ``models verify``
and ``models seal`` say *which* fields changed since the manifest was sealed.

The seal detects edits; it does not authenticate: whoever can write the manifest can re-seal it. What it
guarantees is that an edit is never used silently: the manifest must be re-sealed on purpose
(``cxrtriage models seal``), and the new integrity value then differs from the published one and is
recorded with every result.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

INTEGRITY_FIELD = "integrity"
FIELD_DIGEST_CHARS = 16  # 64 bits: enough to tell which field changed; the full sha256 decides
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX_FIELD = re.compile(rf"[0-9a-f]{{{FIELD_DIGEST_CHARS}}}")


def canonical_json(value: Any) -> bytes:
    """The canonical bytes of a JSON value: sorted keys, no whitespace, ASCII (NaN/Infinity written as Python does)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True).encode("ascii")


def _digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value)).hexdigest()


def manifest_digest(data: Mapping[str, Any]) -> str:
    """``integrity.sha256`` of a manifest: the sha256 of its canonical JSON without the ``integrity`` field."""
    return _digest({k: v for k, v in data.items() if k != INTEGRITY_FIELD})


def field_digests(data: Mapping[str, Any]) -> dict[str, str]:
    """Short digests of every top-level field and of every entry of a top-level object (``thresholds.pneumonia``)."""
    out: dict[str, str] = {}
    for key in sorted(k for k in data if k != INTEGRITY_FIELD):
        value = data[key]
        out[key] = _digest(value)[:FIELD_DIGEST_CHARS]
        if isinstance(value, Mapping):
            for sub in sorted(value):
                out[f"{key}.{sub}"] = _digest(value[sub])[:FIELD_DIGEST_CHARS]
    return out


@dataclass(frozen=True, slots=True)
class Seal:
    """The ``integrity`` object of a manifest."""

    sha256: str
    fields: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "fields": dict(self.fields)}


def seal_of(data: Mapping[str, Any]) -> Seal:
    """The seal the manifest ``data`` should carry (its ``integrity`` field, if any, is left out)."""
    return Seal(sha256=manifest_digest(data), fields=field_digests(data))


def recorded_seal(data: Mapping[str, Any]) -> Seal | None:
    """The seal recorded in ``data``, or None when there is none or it is not well-formed."""
    raw = data.get(INTEGRITY_FIELD)
    if not isinstance(raw, Mapping):
        return None
    sha = raw.get("sha256")
    fields_ = raw.get("fields", {})
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha) or not isinstance(fields_, Mapping):
        return None
    return Seal(sha256=sha, fields={str(k): str(v) for k, v in fields_.items()
                                    if isinstance(v, str) and _HEX_FIELD.fullmatch(v)})


def changed_fields(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """The fields whose digests differ, as ``name`` / ``name (added)`` / ``name (removed)``.

    A changed entry of an object is listed instead of the object itself (``thresholds.pneumonia``, not
    ``thresholds``), unless the object changed in a way no entry shows (e.g. it became a list).
    """
    keys = sorted(set(before) | set(after))
    out: list[str] = []
    for key in keys:
        if before.get(key) == after.get(key):
            continue
        children = [k for k in keys if k.startswith(key + ".") and before.get(k) != after.get(k)]
        if "." not in key and children:
            continue  # its entries are listed
        if key not in before:
            out.append(f"{key} (added)")
        elif key not in after:
            out.append(f"{key} (removed)")
        else:
            out.append(key)
    return out
