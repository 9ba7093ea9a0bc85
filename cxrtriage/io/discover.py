"""Find input files (recursive, sorted, deterministic), probe each one cheaply, and group them by study/series."""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cxrtriage.errors import InputError
from cxrtriage.io.sniff import sniff
from cxrtriage.outdir import output_marker
from cxrtriage.types import DicomInfo, InputKind

if TYPE_CHECKING:
    from cxrtriage.io.dicom import DicomHeader

log = logging.getLogger(__name__)

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR


def discover(
    inputs: Sequence[str | Path], *, include_hidden: bool = False, exclude: Sequence[str | Path] = ()
) -> Iterator[Path]:
    """Yield every file under ``inputs`` (files or folders, walked recursively), sorted and de-duplicated.

    Order is deterministic: inputs in the order given; inside a folder, paths sorted by their parts.
    Hidden files and folders (name starting with ``.``, e.g. ``.DS_Store``, ``.git``) are skipped unless
    ``include_hidden``; a file named explicitly is always yielded. Every other entry is yielded, whatever its
    name, content or type, so that each gets a row: `probe` and `select` decide what it is and report it. That
    includes links that dangle or loop, FIFOs, sockets, device files, links to folders (which are *not*
    followed: the walk never leaves the folders named, and cannot loop) and folders that cannot be listed.

    Folders that hold the outputs of a cxrtriage run are not walked (`cxrtriage.outdir.output_marker`), nor
    the folders in ``exclude`` (the run's own ``--out``): outputs are never read as inputs. Each skipped folder
    is named once in the log; a folder named explicitly in ``inputs`` is walked all the same (unless excluded).
    The same file reached twice (e.g. through a link) is yielded once.

    Raises:
        InputError: an input does not exist (checked for all inputs before anything is yielded).
    """
    paths = [Path(i) for i in inputs]
    missing = [_missing_text(p) for p in paths if not p.exists()]
    if missing:
        raise InputError(f"input not found: {', '.join(missing)}; check the path(s)")
    excluded = {ident for ident in map(_identity, exclude) if ident is not None}
    seen: set[tuple[int, int] | Path] = set()
    skipped = duplicates = 0
    for root in paths:
        if _identity(root) in excluded:
            log.warning("%s: not read, it is this run's output folder", root)
            continue
        if not root.is_dir():  # a file, or anything else named explicitly (a FIFO gets its row from the probe)
            candidates: Iterable[Path] = [root]
        else:
            found: list[Path] = []
            # An unlistable folder becomes an entry of its own, so that it gets a failed row instead of vanishing.
            for dirpath, dirnames, filenames in os.walk(root, followlinks=False, onerror=_collect_into(found, root)):
                here = Path(dirpath)
                if here != root:
                    if excluded and _identity(here) in excluded:
                        log.warning("%s: not read as input, it is this run's output folder", here)
                        dirnames[:] = []
                        continue
                    why = output_marker(here, filenames)
                    if why:
                        log.warning("%s: not read as input, %s (outputs are never inputs; name the folder as an "
                                    "INPUT to read it anyway)", here, why)
                        dirnames[:] = []
                        continue
                if not include_hidden:
                    hidden = [d for d in dirnames if d.startswith(".")]
                    skipped += len(hidden)
                    dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                # A link to a folder is an entry with a row of its own (excluded, not followed).
                links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
                if links:
                    dirnames[:] = [d for d in dirnames if d not in links]
                    found += [here / d for d in links]
                for name in filenames:
                    if not include_hidden and name.startswith("."):
                        skipped += 1
                        continue
                    found.append(here / name)
            candidates = sorted(found, key=lambda q: q.relative_to(root).parts)
        for path in candidates:
            key = _file_key(path)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            yield path
    if skipped:
        log.info("skipped %d hidden file(s)/folder(s) (names starting with '.')", skipped)
    if duplicates:
        log.info("skipped %d path(s) that lead to a file already listed (e.g. through a link)", duplicates)


def _collect_into(found: list[Path], root: Path) -> Callable[[OSError], None]:
    def collect(exc: OSError) -> None:
        found.append(Path(exc.filename) if exc.filename else root)

    return collect


def _identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of a folder, to recognise it under any name; None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _file_key(path: Path) -> tuple[int, int] | Path:
    """What makes two paths the same file: its (device, inode), which one ``stat`` gives (a link is followed; two
    hard links of one file are the same file); the resolved path for what cannot be read that way (a link that
    dangles or loops, an unreadable entry). Why not always the resolved path: it costs a ``lstat`` per path component
    (~20 µs a file here, against ~2 µs for the ``stat``), in the main process, which discovers while it scores."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return _resolved(path)
    return (st.st_dev, st.st_ino)


def _resolved(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
        return Path(os.path.abspath(path))


def _missing_text(p: Path) -> str:
    return f"{p} (a link that dangles or loops)" if p.is_symlink() else str(p)


_SPECIAL_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _safe_text(text: str) -> str:
    """``text`` (e.g. a link target, which may hold any bytes) printable in a results row."""
    return text.encode("utf-8", errors="backslashreplace").decode("utf-8")


def not_a_regular_file(path: str | Path) -> tuple[str, bool] | None:
    """Why ``path`` cannot be read as an image file, as (reason, failed), or None for a readable regular file.

    Decided from ``stat`` alone, so that nothing that could block or never end (a FIFO, a device) is opened.
    ``failed`` is True for an input that is broken (a dangling link, a link loop, a file or folder that cannot be
    read), False for an entry that is simply not an image file (a FIFO, socket or device; a link to a folder).
    """
    p = Path(path)
    try:
        st = os.stat(p)
    except FileNotFoundError:
        if p.is_symlink():
            try:
                target = _safe_text(os.readlink(p))
            except OSError:
                target = "?"
            return f"dangling link: its target '{target}' does not exist; fix or remove the link", True
        return "file not found (removed while the run was going on?)", True
    except OSError as exc:
        if exc.errno == getattr(errno, "ELOOP", -1):
            return "link loop: following this link leads back to itself; fix or remove the link", True
        return f"cannot read the file ({exc.strerror or exc}); check the path and permissions", True
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        if p.is_symlink():
            return ("link to a folder: links to folders are not followed; name the folder itself as an INPUT to "
                    "include it"), False
        try:
            with os.scandir(p):
                pass
        except OSError as exc:
            return f"cannot list this folder ({exc.strerror or exc}); its files were not read", True
        return "a folder, not a file", False
    kind = next((text for test, text in _SPECIAL_KINDS if test(mode)), "a special file")
    return f"{kind}, not a regular file: not opened, as reading it could block or never end", False


@dataclass(frozen=True, slots=True)
class Probe:
    """What a cheap look at one file found (DICOM header only; raster header; SimpleITK image information).

    ``error`` set means the file is unusable (unreadable, not recognised, damaged): `select` reports it as
    ``failed``. ``not_an_image`` set means a recognised file that is not an image (DICOMDIR, the raw data file
    of a MetaImage header): `select` reports it as ``excluded``.
    """

    path: Path
    kind: InputKind
    fmt: str = ""
    dicom: DicomInfo | None = None
    rows: int | None = None
    columns: int | None = None
    frames: int = 1
    samples_per_pixel: int = 1
    bits: int | None = None  # bits allocated (DICOM) or bits per sample (raster / SimpleITK)
    has_pixel_data: bool = False
    colour: bool = False  # true colour content (DICOM: photometric; raster: decoded content check)
    presentation_intent: str = ""
    file_size: int = 0
    assumed_transfer_syntax: str | None = None
    not_an_image: str | None = None
    notes: tuple[str, ...] = ()
    error: str | None = None

    @property
    def size_text(self) -> str:
        if self.rows is None or self.columns is None:
            return "unknown"
        frames = f" x {self.frames} frames" if self.frames > 1 else ""
        return f"{self.columns}x{self.rows}{frames}"


def probe(path: str | Path) -> Probe:
    """Probe one file by content. Never raises for a bad file: problems go into ``Probe.error``."""
    return probe_with_header(path)[0]


def probe_with_header(path: str | Path) -> tuple[Probe, DicomHeader | None]:
    """`probe`, plus the parsed DICOM header for a DICOM file that has one (else None).

    The header lets the reader skip a second header parse (``read_dicom(path, header=...)``). It holds a
    pydicom Dataset, so it stays out of `Probe`, which is small and crosses process boundaries.
    """
    p = Path(path)
    special = not_a_regular_file(p)
    if special is not None:
        reason, failed = special
        if failed:
            return Probe(p, InputKind.UNKNOWN, error=reason), None
        return Probe(p, InputKind.UNKNOWN, not_an_image=reason), None
    try:
        size = p.stat().st_size
        sniffed = sniff(p)
    except OSError as exc:
        return Probe(p, InputKind.UNKNOWN, error=f"cannot read the file ({exc.strerror or exc})"), None
    if sniffed.kind is InputKind.DICOM:
        return _probe_dicom(p, size)
    if sniffed.kind is InputKind.RASTER:
        return _probe_raster(p, sniffed.fmt, size), None
    if sniffed.kind is InputKind.SITK:
        return _probe_sitk(p, sniffed.fmt, size), None
    companion = _companion_of(p)
    if companion:
        return Probe(p, InputKind.UNKNOWN, file_size=size, not_an_image=f"pixel data file of {companion}"), None
    named = _SUFFIX_FORMATS.get(p.suffix.lower())
    if sniffed.text and named:
        # Failed, not excluded: text under an image's name is most often that image gone wrong (an HTML error page
        # or a log saved by a failed download or export), as an empty or unrecognised binary file under such a name
        # is failed below; a failed row gets noticed and the image sent again. Text under any other name (README.md,
        # notes.txt) is excluded: nothing is wrong with it.
        return Probe(p, InputKind.UNKNOWN, file_size=size,
                     error=f"not an image file: it is named '{p.suffix}' but its content is not {named} (text, e.g. "
                           "an error page or a log saved under the image's name); re-send or re-export the original "
                           "image"), None
    if sniffed.text:
        return Probe(p, InputKind.UNKNOWN, file_size=size,
                     not_an_image="text file (e.g. README, CSV, JSON), not an image"), None
    hint = f" ({sniffed.hint})" if sniffed.hint else ""
    mismatch = f"; it is named '{p.suffix}' but its content is not {named}" if named else ""
    return Probe(p, InputKind.UNKNOWN, file_size=size,
                 error=f"not a recognised image file{hint}: no DICOM preamble or parseable DICOM data set, and not "
                       f"PNG/JPEG/TIFF/NIfTI/MHA/NRRD content{mismatch}"), None


# The format a file's name promises (the name decides nothing: it only says what the content was expected to be).
_SUFFIX_FORMATS = {".dcm": "DICOM", ".dicom": "DICOM", ".dic": "DICOM", ".ima": "DICOM", ".png": "PNG", ".jpg": "JPEG",
                   ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".nii": "NIfTI", ".gz": "gzip-compressed NIfTI",
                   ".mha": "MetaImage", ".mhd": "MetaImage", ".nrrd": "NRRD", ".nhdr": "NRRD"}


def _probe_dicom(p: Path, size: int) -> tuple[Probe, DicomHeader | None]:
    from cxrtriage.io.dicom import get_int, read_header

    try:
        header = read_header(p)
    except InputError as exc:
        return Probe(p, InputKind.DICOM, "dicom", file_size=size, error=_strip_path(str(exc), p)), None
    ds, info = header.dataset, header.info
    error = None
    if header.pixel.problem:
        error = header.pixel.problem
    not_image = None
    if info.sop_class_uid == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        not_image = "DICOMDIR (media directory index), not an image"
    colour = info.samples_per_pixel != 1 or (bool(info.photometric_interpretation)
                                             and info.photometric_interpretation not in ("MONOCHROME1", "MONOCHROME2"))
    pr = Probe(
        path=p, kind=InputKind.DICOM, fmt="dicom", dicom=info,
        rows=info.rows or None, columns=info.columns or None, frames=info.number_of_frames,
        samples_per_pixel=info.samples_per_pixel, bits=get_int(ds, "BitsAllocated", 0) or None,
        has_pixel_data=header.pixel.present, colour=colour and header.pixel.present,
        presentation_intent=header.presentation_intent, file_size=size,
        assumed_transfer_syntax=header.assumed_transfer_syntax, not_an_image=not_image,
        notes=header.notes, error=error,
    )
    return pr, header


def _probe_raster(p: Path, fmt: str, size: int) -> Probe:
    from cxrtriage.io.limits import size_problem
    from cxrtriage.io.raster import colour_check, read_raster_header

    try:
        header = read_raster_header(p, fmt)
    except InputError as exc:
        return Probe(p, InputKind.RASTER, fmt, file_size=size, error=_strip_path(str(exc), p))
    colour = False
    notes: list[str] = []
    oversize = size_problem(header.rows, header.columns, samples=header.channels,
                            bytes_per_sample=header.bytes_per_sample, reader="raster", encoded_bytes=size)
    if header.channels >= 3 and oversize is None:  # the colour test decodes the image: not one refused for its size
        try:
            colour = colour_check(p)
        except InputError as exc:
            return Probe(p, InputKind.RASTER, fmt, rows=header.rows, columns=header.columns, file_size=size,
                         error=_strip_path(str(exc), p))
        notes.append("colour content" if colour else "grey content stored as colour channels")
    return Probe(p, InputKind.RASTER, fmt, rows=header.rows, columns=header.columns,
                 samples_per_pixel=header.channels, bits=header.bits, has_pixel_data=True, colour=colour,
                 file_size=size, notes=tuple(notes))


def _probe_sitk(p: Path, fmt: str, size: int) -> Probe:
    from cxrtriage.io.sitk import read_sitk_header

    try:
        header = read_sitk_header(p, fmt)
    except InputError as exc:
        return Probe(p, InputKind.SITK, fmt, file_size=size, error=_strip_path(str(exc), p))
    bits = {"8": 8, "16": 16, "32": 32, "64": 64}.get(header.pixel_type.replace("vector of ", "").split("-")[0])
    return Probe(p, InputKind.SITK, fmt, rows=header.rows, columns=header.columns, frames=header.slices,
                 samples_per_pixel=header.components, bits=bits, has_pixel_data=True, colour=header.components > 1,
                 file_size=size, notes=(f"SimpleITK {header.pixel_type}, size {'x'.join(map(str, header.size))}",))


_DATA_FILE = re.compile(r"^\s*(ElementDataFile\s*=|data file\s*:|datafile\s*:)\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)


def _companion_of(p: Path) -> str | None:
    """The .mhd / .nhdr header in the same folder that names ``p`` as its pixel data file, if any."""
    try:
        siblings = [q for q in p.parent.iterdir() if q.suffix.lower() in (".mhd", ".nhdr") and q.is_file()]
    except OSError:
        return None
    for header in sorted(siblings):
        try:
            text = header.read_text(encoding="ascii", errors="replace")[:8192]
        except OSError:
            continue
        for match in _DATA_FILE.finditer(text):
            if Path(match.group(2)).name == p.name:
                return header.name
    return None


def _strip_path(message: str, p: Path) -> str:
    prefix = f"{p}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def study_key(probe: Probe) -> str:
    """StudyInstanceUID for DICOM, else ``folder:<parent folder>`` (also for DICOM without a StudyInstanceUID)."""
    if probe.dicom is not None and probe.dicom.study_instance_uid:
        return probe.dicom.study_instance_uid
    return f"folder:{probe.path.parent}"


def series_key(probe: Probe) -> str:
    """SeriesInstanceUID for DICOM, else the study key (one series per folder for non-DICOM files)."""
    if probe.dicom is not None and probe.dicom.series_instance_uid:
        return probe.dicom.series_instance_uid
    return study_key(probe)


def group_by_study(probes: Iterable[Probe]) -> dict[str, list[Probe]]:
    """Probes by `study_key`, studies in first-seen order; inside a study, ordered by series then path."""
    groups: dict[str, list[Probe]] = {}
    for pr in probes:
        groups.setdefault(study_key(pr), []).append(pr)
    return {k: sorted(v, key=lambda q: (series_key(q), str(q.path))) for k, v in groups.items()}


def group_by_series(probes: Iterable[Probe]) -> dict[str, dict[str, list[Probe]]]:
    """Probes by study, then by series (both in first-seen order after `group_by_study` sorting)."""
    out: dict[str, dict[str, list[Probe]]] = {}
    for study, members in group_by_study(probes).items():
        series: dict[str, list[Probe]] = {}
        for pr in members:
            series.setdefault(series_key(pr), []).append(pr)
        out[study] = series
    return out
