"""The report folder (``DIR/report/``): which of its files the report writer wrote, and whether they are de-identified.

Why this exists: the README tells users to keep and share ``report/`` as a whole, so whatever an earlier report run
left there is shared with the new one. A ``report --deidentify`` run that only added its pseudonymous pages beside the
identified pages of an earlier run (``<StudyInstanceUID>.html``/``.pdf`` and their pictures, with name, ID and birth
date) leaked exactly what it was asked to hide. So a full run replaces the writer's earlier files as a whole
(`clear_reports`), and the folder keeps a small record of what it holds (`FolderRecord`, in ``RECORD_NAME``) so that
an incremental call (``serve``, ``watch``) can tell whether the pages it links to were written with its own setting.

Only files named as the writer names them are ever removed: a file of the user's own in ``report/`` stays.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from cxrtriage import __version__
from cxrtriage.errors import OutputError
from cxrtriage.files import PARTIAL_SUFFIX, atomic_write, safe_component, text_bytes

INDEX_NAME = "index.html"
# The index's machine-readable companion, written last. It holds no patient data (a de-identified folder's record
# names its pseudonymous slugs only, which its index links to anyway), so it may travel with the folder. Not a hidden
# file: a name starting with "." in report/ would read like one built from a ".." study UID (tests/report).
RECORD_NAME = "index.json"
# The writer's file names, one study slug each: `batch._study_output` writes ``<slug>.html`` and ``<slug>.pdf``,
# `view.image_view` names the pictures ``<slug>-image<N>-<k>.jpg``.
_STUDY_FILE = re.compile(r"(?P<slug>.+?)(?:\.html|\.pdf|-image[0-9]+-[0-9]+\.jpg)")
# `header.study_slug` when de-identified: "study-" and 10 upper-case hex digits of an HMAC. Matched by form, not by
# value, because the pages of an earlier run may carry pseudonyms under another key.
_PSEUDONYMOUS_SLUG = re.compile(r"study-[0-9A-F]{10}")
# `study.load_results` makes two studies that share a slug unique with "-1", "-2", ...
_DUPLICATE_SUFFIX = re.compile(r"-[0-9]+$")


# A UID-shaped study key is its own slug: digits in dot-separated components, so never "." or ".." (PS3.5 9.1
# also bars leading zeros; real UIDs have them now and then, and they are harmless in a file name).
_UID_SLUG = re.compile(r"[0-9]+(?:\.[0-9]+)*")


def identified_slug(key: str) -> str:
    """A study's slug when not de-identified (`cxrtriage.report.header.study_slug`): here, without pydicom, because
    predict names the writer's files of an earlier run by it and a plain predict imports no report writer.

    A UID-shaped key (``1.2.840...``, at most 64 characters) is used as it is; any other key (``..``, a folder
    path, a formula) gives its last path component made safe and a hash of the whole key, so a slug is never
    ``.``, ``..``, empty or holds a separator.
    """
    if len(key) <= 64 and _UID_SLUG.fullmatch(key):
        return key
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(key).name or key).strip("._")[:40] or "study"
    digest = hashlib.sha256(text_bytes(key)).hexdigest()[:8]
    return safe_component(f"{base}-{digest}", fallback=f"study-{digest}")


@dataclass(frozen=True, slots=True)
class FolderRecord:
    """What a report folder holds: reports de-identified or not, and the slugs of the studies they were written for."""

    deidentified: bool
    studies: frozenset[str]


def read_record(report_dir: Path) -> FolderRecord | None:
    """The folder's record, or None when there is none (the folder's setting is then unknown).

    Raises:
        OutputError: ``RECORD_NAME`` is there but not a record of cxrtriage: a file of the user's own, which the
            record would overwrite.
    """
    path = report_dir / RECORD_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        text = ""
    except OSError as exc:
        raise OutputError(f"{path}: cannot read the record of the report folder ({exc.strerror or exc}); check its "
                          "permissions") from exc
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if (isinstance(data, dict) and data.get("tool") == "cxrtriage" and isinstance(data.get("deidentified"), bool)
            and isinstance(data.get("studies"), list) and all(isinstance(s, str) for s in data["studies"])):
        return FolderRecord(data["deidentified"], frozenset(data["studies"]))
    # atomic_write never leaves a record half-written, so this is not one of ours
    raise OutputError(f"{path}: not the record that cxrtriage keeps of its reports there, and a report run writes "
                      f"that record under this name: move the file out of {report_dir}, and run again")


def write_record(report_dir: Path, record: FolderRecord) -> Path:
    data = {"tool": "cxrtriage", "version": __version__, "deidentified": record.deidentified,
            "studies": sorted(record.studies)}
    return atomic_write(report_dir / RECORD_NAME, json.dumps(data, indent=1) + "\n")


def _is_writer_name(name: str, slugs: Collection[str]) -> bool:
    name = name.removesuffix(PARTIAL_SUFFIX)  # a write cut short leaves its partial file
    if name in (INDEX_NAME, RECORD_NAME):
        return True
    m = _STUDY_FILE.fullmatch(name)
    if m is None:
        return False
    slug = m["slug"]
    return any(s in slugs or _PSEUDONYMOUS_SLUG.fullmatch(s) for s in (slug, _DUPLICATE_SUFFIX.sub("", slug)))


def _entries(report_dir: Path) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(report_dir))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise OutputError(f"{report_dir}: cannot list the report folder ({exc.strerror or exc}); check its "
                          "permissions") from exc


def writer_files(report_dir: Path, slugs: Iterable[str]) -> list[Path]:
    """The files in ``report_dir`` that the report writer wrote: the index, the record (checked by `read_record`
    first), and the pages, PDFs and pictures of a study named by one of ``slugs`` (with the suffix of a duplicate
    slug) or by a pseudonymous slug.

    ``slugs`` should hold every slug the folder's files may carry that is not a pseudonym: the identified slugs of the
    results' studies and the slugs the record names. A file of any other name, a folder, is not the writer's.
    """
    known = set(slugs)
    return sorted(Path(e.path) for e in _entries(report_dir)
                  if not e.is_dir(follow_symlinks=False) and _is_writer_name(e.name, known))


def other_entries(report_dir: Path, slugs: Iterable[str]) -> list[Path]:
    """What ``report_dir`` holds besides `writer_files`: the user's own files and folders, which no run removes."""
    known = set(slugs)
    return sorted(Path(e.path) for e in _entries(report_dir)
                  if e.is_dir(follow_symlinks=False) or not _is_writer_name(e.name, known))


def clear_reports(report_dir: Path, slugs: Iterable[str]) -> list[Path]:
    """Remove what the writer wrote into ``report_dir`` (`writer_files`), the record included; returns what was
    removed. Nothing else in the folder is touched.

    Raises:
        OutputError: a file cannot be removed (the message names it): nothing new is written then, since new
            reports beside the earlier ones would hide that the earlier ones are still there.
    """
    files = writer_files(report_dir, slugs)
    for path in files:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise OutputError(f"{path}: cannot remove this report of an earlier run ({exc.strerror or exc}); a new "
                              "report run replaces the earlier reports as a whole: remove it yourself, or fix the "
                              "folder's permissions, and run again") from exc
    return files


def why_rewrite(record: FolderRecord | None, *, has_reports: bool, deidentified: bool,
                slugs: Collection[str]) -> str | None:
    """Why an incremental call may not keep the earlier pages of the folder (and must write every study's page
    anew), in words for the index; None when it may.

    ``has_reports``: the folder holds files of the writer; ``slugs``: the slugs of the results' studies, as this call
    names them.
    """
    setting = "de-identified" if deidentified else "identified"
    if record is None:
        if not has_reports:
            return None  # nothing earlier to link to, or to leak
        return (f"report/ held reports without a record of whether they are de-identified (written by an earlier "
                f"version, or by a run cut short); every study's report was written again, {setting}")
    if record.deidentified != deidentified:
        held = "de-identified" if record.deidentified else "identified"
        return f"report/ held {held} reports; every study's report was written again, {setting}"
    if not record.studies <= set(slugs):
        return ("report/ held reports named for other studies (pseudonyms under another CXRTRIAGE_PSEUDONYM_KEY, or "
                "studies no longer in the results); every study's report was written again")
    return None
