"""Output files: written atomically (temp file + rename) under unique, filesystem-safe names.

Every file cxrtriage writes goes through ``atomic_write`` (whole contents at once) or ``atomic_output``
(streamed, e.g. a CSV written row by row): a crash or a full disk leaves the previous file, or none,
never a half-written one. Artefact names come from ``StemRegistry`` so that two inputs with the same
name never overwrite each other's masks or heat maps.
"""

from __future__ import annotations

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


def partial_path(path: Path) -> Path:
    """The temporary name ``path`` is written under until it is complete (``results.csv.partial``)."""
    return path.with_name(path.name + PARTIAL_SUFFIX)


def _fail(path: Path, exc: OSError) -> OutputError:
    return OutputError(f"{path}: cannot write ({exc.strerror or exc}); check the folder exists, is writable and "
                       "the disk is not full")


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = False) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; folders are created. Returns ``path``.

    ``fsync`` flushes the file to disk before the rename (for files that must survive a power cut).

    Raises:
        OutputError: the file cannot be written; the message names it.
    """
    p = Path(path)
    tmp = partial_path(p)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, p)
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
                self._f = open(self.partial, "w", newline="", encoding="utf-8")  # type: ignore[assignment]  # noqa: SIM115
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


def safe_name(name: str) -> str:
    """A file-name-safe version of a stem or label: letters, digits, '.', '_', '-' (anything else becomes '_')."""
    return _UNSAFE.sub("_", name).strip("._") or "x"


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

