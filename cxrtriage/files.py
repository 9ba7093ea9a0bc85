"""Output files: written atomically (temp file + rename) under unique, filesystem-safe names.

Every file cxrtriage writes goes through ``atomic_write`` (whole contents at once) or ``atomic_output``
(streamed, e.g. a CSV written row by row): a crash or a full disk leaves the previous file, or none,
never a half-written one. Artefact names come from ``StemRegistry`` so that two inputs with the same
name never overwrite each other's masks or heat maps.

Names built from data (input file names, labels, study keys) are made safe here, once:

- ``safe_name``: ASCII letters, digits, ``.``, ``_``, ``-`` only (no separator, no NUL, no ``..``, never empty),
  at most ``MAX_PART`` characters; a longer name is cut and keeps a short hash of the whole name, so that two
  long names stay distinct. ``fit_name`` does the same for a whole file name with its suffix (``MAX_NAME``),
  which leaves room for the ``.partial`` suffix of the atomic write under the usual 255-byte limit.
- ``safe_component``: a study slug or other single path component: never ``.``, ``..``, empty or with a separator.

Text files are encoded as UTF-8 with ``TEXT_ERRORS``: a character UTF-8 cannot hold (the surrogate escape of a
file-name byte that is not UTF-8) is written as ``\\xNN`` instead of aborting the write. The tables escape such
text losslessly before it gets here (``cxrtriage.results.cells``); this is the net under everything else.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import re
from contextlib import suppress
from pathlib import Path
from typing import IO, Generic, Literal, TypeVar, overload

from cxrtriage.errors import OutputError

PARTIAL_SUFFIX = ".partial"
# Suffixes dropped from an input's name to make its artefact stem (``scan.dcm`` -> ``scan``).
_INPUT_SUFFIXES = (".gz", ".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff", ".nii", ".mha", ".nrrd")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
# Longest part of an artefact name built from data (a stem, a label) and longest artefact file name, suffix
# included: 255 bytes is the usual file-name limit; "name.partial" (atomic writes) must fit in it as well.
MAX_PART = 96
MAX_NAME = 200
_HASH_LEN = 8
TEXT_ERRORS = "cxrtriage-bytes"


def _bytes_as_escapes(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: surrogate escapes of undecodable bytes become ``\\xNN`` (other lone surrogates
    ``\\uXXXX``), so that writing text never aborts on a file name that is not UTF-8."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    chunk = exc.object[exc.start:exc.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else f"\\u{ord(c):04x}"
                   for c in chunk), exc.end


codecs.register_error(TEXT_ERRORS, _bytes_as_escapes)


def partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under until it is complete (``results.csv.partial``)."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _fail(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"{path}: cannot write ({exc.strerror or exc}); check the folder exists, is writable and "
                       "the disk is not full")


def fsync_dir(folder: str | Path) -> None:
    """Flush a folder's entries to disk: a file just created or renamed in it survives a power cut only after this.

    A no-op where folders cannot be opened (Windows); an ``OSError`` of the flush itself propagates.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (OSError, ValueError):  # Windows cannot open a folder; its rename is durable with the file
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (a write may be short, e.g. on a signal or a nearly full disk)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; folders are created. Returns ``path``.

    ``fsync`` flushes the file to disk before the rename, and the folder after it (for files that must survive a
    power cut: the new name is durable only once the folder is).

    Raises:
        OutputError: the file cannot be written; the message names it.
    """
    p = Path(path)
    tmp = partial_path(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8", TEXT_ERRORS) if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
        if fsync:
            fsync_dir(p.parent)
    except OSError as exc:
        with suppress(OSError):  # e.g. the parent is a file: there is no partial file to remove
            tmp.unlink(missing_ok=True)
        raise _fail(p, exc) from exc
    return p


T = TypeVar("T", str, bytes)


class AtomicOutput(Generic[T]):
    """A file written under its partial name and renamed into place by ``commit`` (see ``atomic_output``)."""

    def __init__(self, path: Path, mode: str, *, fsync: bool = False, keep_on_error: bool = False) -> None:
        self.path = path
        self.partial = partial_path(path)
        self._mode = mode
        self._fsync = fsync
        self._keep_on_error = keep_on_error
        self._f: IO[T] | None = None

    def open(self) -> IO[T]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._mode == "wb":
                self._f = open(self.partial, "wb")  # type: ignore[assignment]  # noqa: SIM115
            else:
                self._f = open(self.partial, "w", newline="", encoding="utf-8",  # type: ignore[assignment]  # noqa: SIM115
                               errors=TEXT_ERRORS)
        except OSError as exc:
            raise _fail(self.path, exc) from exc
        assert self._f is not None
        return self._f

    def commit(self) -> None:
        """Finish the file and rename it into place."""
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
            f.close()
            os.replace(self.partial, self.path)
        except OSError as exc:
            f.close()
            self.partial.unlink(missing_ok=True)
            raise _fail(self.path, exc) from exc

    def abort(self, *, keep: bool | None = None) -> None:
        """Close without renaming; the partial file stays (for inspection) when ``keep``, else it is removed."""
        if self._f is None:
            return
        f, self._f = self._f, None
        f.close()
        if not (self._keep_on_error if keep is None else keep):
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> IO[T]:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@overload
def atomic_output(
    path: str | Path, mode: Literal["w"] = "w", *, fsync: bool = False, keep_on_error: bool = False
) -> AtomicOutput[str]: ...
@overload
def atomic_output(
    path: str | Path, mode: Literal["wb"], *, fsync: bool = False, keep_on_error: bool = False
) -> AtomicOutput[bytes]: ...
def atomic_output(
    path: str | Path, mode: Literal["w", "wb"] = "w", *, fsync: bool = False, keep_on_error: bool = False
) -> AtomicOutput[str] | AtomicOutput[bytes]:
    """Stream into ``path``'s partial file; a clean exit renames it into place, an exception removes it
    (or, with ``keep_on_error``, leaves it for inspection) and propagates. ``path`` itself is never half-written.

    Text mode writes UTF-8 with ``newline=""`` (what the ``csv`` module expects)::

        with atomic_output(out / "explain.csv") as f:
            csv.writer(f).writerows(rows)
    """
    return AtomicOutput(Path(path), mode, fsync=fsync, keep_on_error=keep_on_error)


def text_bytes(text: str) -> bytes:
    """The bytes ``text`` stands for: UTF-8, and a file name's undecodable bytes as they were (for hashes)."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (from JSON, say)
        return text.encode("utf-8", "surrogatepass")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text_bytes(text)).hexdigest()[:_HASH_LEN]


def _cut(safe: str, original: str, limit: int) -> str:
    """``safe`` when it fits in ``limit`` characters, else its start and a hash of ``original`` (unique names)."""
    if len(safe) <= limit:
        return safe
    head = safe[: max(1, limit - _HASH_LEN - 1)].rstrip("._-") or "x"
    return f"{head}-{_short_hash(original)}"


def safe_name(name: str, *, max_len: int = MAX_PART) -> str:
    """A file-name-safe version of a stem or label: letters, digits, '.', '_', '-' (anything else becomes '_'),
    never starting or ending with '.' or '_' (so never ``.``, ``..`` or empty), at most ``max_len`` characters
    (a longer name keeps its start and a hash of the whole name)."""
    return _cut(_UNSAFE.sub("_", name).strip("._") or "x", name, max_len)


def fit_name(stem: str, suffix: str, *, max_len: int = MAX_NAME) -> str:
    """``stem + suffix`` as a file name of at most ``max_len`` characters: ``stem`` (already ``safe_name``d) is cut,
    with a hash of it, when the whole would be longer."""
    return _cut(stem, stem, max(_HASH_LEN + 2, max_len - len(suffix))) + suffix


def safe_component(name: str, *, fallback: str = "x") -> str:
    """``name`` when it is usable as one path component as it is (no separator or NUL, not ``.``, ``..`` or empty,
    not too long), else its ``safe_name`` (``fallback`` when nothing of it is left). Nothing built from data may
    name a folder above, or the folder itself."""
    if (name and name not in (".", "..") and len(name) <= MAX_PART and "/" not in name and "\\" not in name
            and "\x00" not in name and name == name.strip()):
        return name
    cleaned = _UNSAFE.sub("_", name).strip("._")
    return _cut(cleaned, name, MAX_PART) if cleaned else fallback


def input_stem(path: str | Path) -> str:
    """The artefact stem of an input file: its name without a known image suffix, made file-name safe
    (``safe_name``, so that names built from it, such as heat-map file names, keep it unchanged)."""
    base = Path(path).name
    for suffix in _INPUT_SUFFIXES:
        if base.lower().endswith(suffix) and len(base) > len(suffix):
            base = base[: -len(suffix)]
    return safe_name(base)


class StemRegistry:
    """Unique, stable artefact stems for the inputs of one run: ``scan``, then ``scan_2``, ``scan_3``...

    The same input path always gets the same stem; stems are unique ignoring case (for case-insensitive
    file systems).
    """

    def __init__(self) -> None:
        self._assigned: dict[str, str] = {}
        self._taken: set[str] = set()

    def assigned(self, path: str | Path) -> str | None:
        """The stem ``path`` was given, or None when it has none yet."""
        return self._assigned.get(str(path))

    def reserve(self, path: str | Path, stem: str) -> None:
        """Give ``path`` the stem an earlier run gave it (``predict --resume``, ``serve``), so that its artefacts keep
        their names and no other input takes them."""
        self._assigned[str(path)] = stem
        self._taken.add(stem.lower())

    def stem_for(self, path: str | Path) -> str:
        key = str(path)
        if key in self._assigned:
            return self._assigned[key]
        base = input_stem(key)
        stem, k = base, 1
        while stem.lower() in self._taken:
            k += 1
            stem = f"{base}_{k}"
        self._taken.add(stem.lower())
        self._assigned[key] = stem
        return stem

