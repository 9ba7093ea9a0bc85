"""Read a labels CSV and match its rows to results records by file name, path or SOP Instance UID.

LABELS.csv has one row per image: an ``image`` column (a file name, a path relative to any common
root, an absolute path, or a DICOM SOP Instance UID), optionally a ``sop_instance_uid`` column,
0/1 columns named like the model's labels, and any other columns (subgroups such as sex or view).
0/1 columns that name no model label (``pneumothorax`` for a model without it) are findings too: they get no
metrics of their own, but count in the triage truth (``LabelTable.findings``).
Nothing is silently dropped: every unmatched or ambiguous row is returned with the reason.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from numpy.typing import NDArray

from cxrtriage.errors import InputError
from cxrtriage.results import ImageRecord
from cxrtriage.triage.policy import TriagePolicy, normalize_label

IMAGE_COLUMN = "image"
UID_COLUMN = "sop_instance_uid"
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)+$")
_TRUE = {"1", "1.0", "true", "yes", "positive", "pos"}
_FALSE = {"0", "0.0", "false", "no", "negative", "neg"}
_MISSING = {"", "nan", "na", "n/a", "none", "-1", "-1.0", "uncertain", "?"}


def _read_csv(path: Path, what: str) -> tuple[list[str], list[dict[str, str]]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = [dict(r) for r in reader]
            return list(reader.fieldnames or []), rows
    except FileNotFoundError as exc:
        raise InputError(f"{path}: {what} file not found") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"{path}: cannot read the {what} CSV ({exc})") from exc


@dataclass(frozen=True, slots=True)
class LabelTable:
    """A parsed labels CSV: truth per model label (NaN = unknown), and the remaining (subgroup) columns."""

    path: Path
    rows: list[dict[str, str]]
    image_column: str | None
    uid_column: str | None
    label_columns: dict[str, str]  # model label -> CSV column
    truth: dict[str, NDArray[np.float64]]  # model label -> [n_rows] of 0/1/NaN
    subgroup_columns: tuple[str, ...]
    unused_label_like: tuple[str, ...] = ()  # 0/1 columns that name no model label
    other_truth: dict[str, NDArray[np.float64]] = field(default_factory=dict)  # those columns -> [n_rows] of 0/1/NaN

    def __len__(self) -> int:
        return len(self.rows)

    def finding_names(self, policy: TriagePolicy) -> list[str]:
        """Every finding this table gives truth for: the model labels it has a column for, then its 0/1 columns that
        name no model label (by column name); labels the policy ignores (``no_finding``) are left out."""
        return [name for name in (*self.truth, *self.other_truth) if not policy.is_ignored(name)]

    def findings(self, row: int, policy: TriagePolicy) -> dict[str, float]:
        """The truth of labels row ``row`` for every finding of ``finding_names`` (NaN = unknown).

        Why the columns without a model label count: triage truth is a fact about the image, not about what the model
        can see. A pneumothorax the model has no label for is still a critical finding the triage missed, and an image
        whose only finding is emphysema is not normal; leaving such columns out called those images negatives and
        showed "critical findings flagged critical: 0 of 0" on a set with two pneumothoraces. A 0/1 column that is not
        a finding at all errs the cautious way (more images must not be called normal); list it under the policy's
        ``[labels] ignore`` to leave it out.
        """
        both = {**self.truth, **self.other_truth}
        return {name: float(both[name][row]) for name in self.finding_names(policy)}


def _truth_value(raw: str, where: str) -> float:
    v = raw.strip().lower()
    if v in _TRUE:
        return 1.0
    if v in _FALSE:
        return 0.0
    if v in _MISSING:
        return math.nan
    raise InputError(f"{where}: value {raw!r} is not a label; use 1 (present), 0 (absent) or leave it empty (unknown)")


def read_labels(path: str | Path, model_labels: Sequence[str]) -> LabelTable:
    """Read LABELS.csv; label columns are matched to ``model_labels`` ignoring case, spaces, '-' and '_'."""
    p = Path(path)
    columns, rows = _read_csv(p, "labels")
    by_norm = {c.strip().lower(): c for c in columns}
    image_col = by_norm.get(IMAGE_COLUMN)
    uid_col = by_norm.get(UID_COLUMN)
    if image_col is None and uid_col is None:
        raise InputError(
            f"{p}: the labels CSV needs an '{IMAGE_COLUMN}' column (file name or path of each image, or its SOP Instance "
            f"UID) or a '{UID_COLUMN}' column; found columns {columns}"
        )
    label_columns: dict[str, str] = {}
    norm_cols = {normalize_label(c): c for c in columns if c not in (image_col, uid_col)}
    for lab in model_labels:
        col = norm_cols.get(normalize_label(lab))
        if col is not None:
            label_columns[lab] = col
    truth: dict[str, NDArray[np.float64]] = {}
    for lab, col in label_columns.items():
        truth[lab] = np.array(
            [_truth_value(r.get(col) or "", f"{p}: row {i + 2}, column '{col}'") for i, r in enumerate(rows)], dtype=np.float64
        )
    used = {image_col, uid_col, *label_columns.values()}
    others = tuple(c for c in columns if c not in used)
    # 0/1 columns (unknowns allowed, e.g. CheXpert's -1) with at least one 0 or 1: findings the model has no label for
    label_like = tuple(
        c for c in others
        if c not in label_columns and rows and all((r.get(c) or "").strip().lower() in (_TRUE | _FALSE | _MISSING) for r in rows)
        and any((r.get(c) or "").strip().lower() in (_TRUE | _FALSE) for r in rows)
    )
    other_truth = {c: np.array([_truth_value(r.get(c) or "", f"{p}: row {i + 2}, column '{c}'") for i, r in enumerate(rows)],
                               dtype=np.float64) for c in label_like}
    return LabelTable(p, rows, image_col, uid_col, label_columns, truth, others, label_like, other_truth)


@dataclass(frozen=True, slots=True)
class MatchResult:
    """Which labels row goes with which results row, and every row that found no partner (with why)."""

    pairs: list[tuple[int, int]]  # (results index, labels index)
    unmatched_labels: list[tuple[int, str]] = field(default_factory=list)  # (labels index, reason)
    unmatched_results: list[int] = field(default_factory=list)  # results indices with no label row
    how: dict[str, int] = field(default_factory=dict)  # match method -> count


def _norm_path(text: str) -> str:
    t = text.strip().replace("\\", "/").lower()
    while t.startswith("./"):
        t = t[2:]
    return t


def _suffixes(path: str) -> list[str]:
    parts = [q for q in PurePosixPath(_norm_path(path)).parts if q not in ("/", "")]
    return ["/".join(parts[i:]) for i in range(len(parts))]


def match_labels(results: Sequence[ImageRecord], table: LabelTable) -> MatchResult:
    """Match each labels row to one results record.

    In order: by SOP Instance UID (``sop_instance_uid`` column, or an ``image`` value that is a UID);
    by path, where the labels ``image`` must equal the whole results path or its trailing components
    (so "images/a.png" matches "/data/nih/images/a.png"; case-insensitive); by file name alone when
    that is unique. Ambiguous and duplicate matches are reported, never guessed.
    """
    by_uid: dict[str, list[int]] = {}
    by_suffix: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    for i, r in enumerate(results):
        uid = (r.sop_instance_uid or "").strip()
        if uid:
            by_uid.setdefault(uid, []).append(i)
        sfx = _suffixes(r.path)
        for s in sfx:
            by_suffix.setdefault(s, []).append(i)
        if sfx:
            by_name.setdefault(sfx[-1], []).append(i)

    taken: dict[int, int] = {}
    pairs: list[tuple[int, int]] = []
    unmatched: list[tuple[int, str]] = []
    how: dict[str, int] = {}
    for j, row in enumerate(table.rows):
        image = (row.get(table.image_column) or "").strip() if table.image_column else ""
        uid = (row.get(table.uid_column) or "").strip() if table.uid_column else ""
        if not uid and _UID_RE.match(image):
            uid = image
        cands: list[int] = []
        method = ""
        if uid and uid in by_uid:
            cands, method = by_uid[uid], "sop_instance_uid"
        elif image:
            key = _norm_path(image).lstrip("/")
            if key in by_suffix:
                cands, method = by_suffix[key], "path" if "/" in key else "file name"
            else:
                name = PurePosixPath(key).name
                cands, method = by_name.get(name, []), "file name"
        if not image and not uid:
            unmatched.append((j, "empty image and sop_instance_uid"))
            continue
        if not cands:
            unmatched.append((j, "no results row with this file name, path or SOP Instance UID"))
            continue
        if len(cands) > 1:
            why = f"ambiguous: {len(cands)} results rows match by {method}; give a longer path in '{IMAGE_COLUMN}'"
            unmatched.append((j, why))
            continue
        i = cands[0]
        if i in taken:
            unmatched.append((j, f"duplicate: labels row {taken[i] + 2} already matched {results[i].path}"))
            continue
        taken[i] = j
        pairs.append((i, j))
        how[method] = how.get(method, 0) + 1
    unmatched_results = [i for i in range(len(results)) if i not in taken]
    return MatchResult(pairs, unmatched, unmatched_results, how)
