"""The output folder of a run: one writer at a time, and how cxrtriage recognises a folder it wrote.

**One writer per folder.** Every command that writes into an output folder (``predict``, ``segment``, ``explain``,
``report``) holds ``OUT/.cxrtriage.lock`` for the whole run (`lock_output`): an exclusive ``flock`` on that file,
which the operating system drops whenever the process ends, kill -9 included, so a lock is never left stale.
The file names the holder (command, pid, host, start time) so that a second run into the same folder refuses at
once (``OutputError``, exit 5) with one line that says who holds it. A run that finishes removes the file; a run
that stops on an error, a signal or kill -9 leaves it (unlocked): it then marks the folder as the output of a
run that did not finish, and the next run into the folder simply takes it over.

**Outputs are never inputs.** `output_marker` says whether a folder holds a cxrtriage run (the lock file, a
``run.json`` or a results table written by cxrtriage), so that discovery can skip it when ``--out`` lies inside
an input folder; `check_out_is_not_an_input` refuses ``--out`` equal to an input folder.

Locking needs ``fcntl`` (Linux, macOS, BSD). Without it (Windows) runs are not locked; on a file system that
refuses locks (some network shares) the run goes on with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import stat
from collections.abc import Collection, Iterable
from pathlib import Path
from types import TracebackType

from cxrtriage import __version__
from cxrtriage.errors import ConfigError, OutputError
from cxrtriage.results import RESULTS_CSV, RUN_JSON, utc_now

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not locked there
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".cxrtriage.lock"
# The first columns of the tables cxrtriage writes (results.csv, segment.csv, explain.csv): a table that starts
# with these is one of ours. The names of segment.csv and explain.csv are owned by upper layers
# (pipeline.segment.SEGMENT_CSV, explain.batch.CSV_NAME); tests/test_outdir.py checks they match.
TABLE_HEADERS = {
    RESULTS_CSV: "path,status,",
    "segment.csv": "path,status,",
    "explain.csv": "path,label,method,status,",
}
_HEAD_BYTES = 512
_MAX_ATTEMPTS = 8  # lock attempts lost to a holder that removed the file as we opened it


class OutputLock:
    """The lock of one output folder, held from `acquire` to `release` (use `lock_output` as a context manager)."""

    def __init__(self, out_dir: str | Path, command: str, *, create: bool = True) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK_NAME
        self.command = command
        self._create = create
        self._created = False
        self._fd: int | None = None
        # The holder named in a lock file left by a run that did not finish (killed, crashed), found when this lock
        # was taken; None when there was none. ``predict`` says it replaces (or, with --resume, continues) that run.
        self.unfinished: dict[str, object] | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> OutputLock:
        """Create the folder when needed (unless ``create`` is false) and take its lock.

        Raises:
            OutputError: another run holds the folder (the message names it), or the folder or its lock file
                cannot be created.
        """
        if not self.out_dir.is_dir():
            if not self._create:
                return self  # nothing to protect: whoever reads the folder reports that it is missing
            try:
                self.out_dir.mkdir(parents=True)
            except FileExistsError:
                if not self.out_dir.is_dir():
                    raise OutputError(f"{self.out_dir}: exists and is not a folder; choose another --out") from None
                # else made by a concurrent run just now: the lock below decides
            except OSError as exc:
                raise OutputError(f"{self.out_dir}: cannot create the output folder ({exc.strerror or exc}); check "
                                  "that its parent exists and is writable, or choose another --out") from exc
            else:
                self._created = True
        if fcntl is None:
            log.debug("%s: not locked (no fcntl on this platform)", self.out_dir)
            return self
        for _ in range(_MAX_ATTEMPTS):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(fd)
                os.close(fd)
                self._remove_created_folder()
                raise OutputError(f"{self.out_dir}: another cxrtriage run is writing into this folder ({holder}); "
                                  "wait until it has finished, or choose another --out folder") from None
            except OSError as exc:  # e.g. ENOLCK: a network share without locks
                log.warning("%s: cannot lock the output folder (%s); make sure that no other run writes into it",
                            self.out_dir, exc.strerror or exc)
                self._fd = fd
                self._write_holder()
                return self
            # The previous holder removes the file as it finishes; a lock taken on that removed file guards
            # nothing, so it must be the file that is at the path now.
            try:
                current = os.stat(self.path, follow_symlinks=False)
            except OSError:
                current = None
            if current is not None and os.path.samestat(os.fstat(fd), current):
                self._fd = fd
                self.unfinished = _left_holder(fd)
                self._write_holder()
                return self
            os.close(fd)
        raise OutputError(f"{self.out_dir}: cannot take the lock {LOCK_NAME} (it keeps changing); is another "
                          "program removing it? Choose another --out folder")

    def _open(self) -> int:
        # O_NOFOLLOW: a link planted as the lock file must not make us truncate its target.
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
        try:
            return os.open(self.path, flags, 0o644)
        except OSError as exc:
            self._remove_created_folder()
            what = "it is a link; remove it" if exc.errno == getattr(errno, "ELOOP", -1) else "check that the folder is writable"
            raise OutputError(f"{self.path}: cannot create the lock file of the output folder ({exc.strerror or exc}); "
                              f"{what}") from exc

    def _write_holder(self) -> None:
        assert self._fd is not None
        info = {"tool": "cxrtriage", "version": __version__, "command": self.command, "pid": os.getpid(),
                "host": socket.gethostname(), "started_at": utc_now()}
        data = (json.dumps(info) + "\n").encode("utf-8")
        try:
            os.ftruncate(self._fd, 0)
            os.lseek(self._fd, 0, os.SEEK_SET)
            os.write(self._fd, data)
        except OSError as exc:  # the lock is held; only the message another run would show is lost
            log.debug("%s: cannot write the lock holder (%s)", self.path, exc)

    def release(self, *, finished: bool) -> None:
        """Drop the lock. ``finished``: the run completed, so the lock file goes; otherwise it stays as the mark of
        a run that did not finish, unless it is all the folder holds (then the folder is left as it was found)."""
        fd, self._fd = self._fd, None
        try:
            if finished:
                _unlink(self.path)
            else:
                try:
                    only_lock = os.listdir(self.out_dir) == [LOCK_NAME]
                except OSError:
                    only_lock = False
                if only_lock:
                    _unlink(self.path)
                self._remove_created_folder()
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock

    def _remove_created_folder(self) -> None:
        """Remove the folder this lock created when nothing was written into it (an error before the run began)."""
        if self._created:
            try:
                self.out_dir.rmdir()
            except OSError:
                pass  # not empty: keep it
            else:
                self._created = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release(finished=exc_type is None)


def lock_output(out_dir: str | Path, command: str, *, create: bool = True) -> OutputLock:
    """Hold ``out_dir`` for one run of ``command``; use as ``with lock_output(out, "predict"): ...``.

    The lock is taken on entering the ``with`` block (see `OutputLock.acquire` for the errors) and dropped on
    leaving it, however it is left. ``create=False``: a missing folder is not created (and not locked).
    """
    return OutputLock(out_dir, command, create=create)


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.debug("%s: cannot remove (%s)", path, exc)


def _left_holder(fd: int) -> dict[str, object] | None:
    """The holder a lock file names when we take it: a run that left it behind (it did not finish), else None."""
    try:
        raw = os.pread(fd, 4096, 0)
    except OSError:
        return None
    if not raw.strip():
        return None  # created just now
    try:
        info = json.loads(raw.decode("utf-8"))
    except ValueError:
        return {"command": "unknown"}
    return info if isinstance(info, dict) else {"command": "unknown"}


def describe_run(info: dict[str, object]) -> str:
    """A run, from the content of its lock file: "predict, pid 1234 on host, since 2026-01-01T10:00:00+00:00"."""
    command = str(info.get("command") or "a run")
    host = info.get("host")
    where = f" on {host}" if host else ""
    return f"{command}, pid {info.get('pid', '?')}{where}, since {info.get('started_at', '?')}"


def _describe_holder(fd: int) -> str:
    """Who holds a lock, from the lock file's content: "predict, pid 1234 on host, since 2026-01-01T10:00:00+00:00"."""
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw.decode("utf-8"))
    except (OSError, ValueError):
        return "it has only just started; its pid is not written yet"
    if not isinstance(info, dict):
        return "unknown run"
    return describe_run(info)


def _head(path: Path) -> str:
    """The first bytes of a regular file as text ("" for anything else: a FIFO must never be opened)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return ""
        with open(path, "rb") as f:
            return f.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def output_marker(folder: str | Path, names: Collection[str]) -> str | None:
    """Why ``folder`` (whose file names are ``names``) holds the outputs of a cxrtriage run, or None when it does not.

    The marks: the lock file (a run is writing there, or stopped before it finished), a ``run.json`` written by
    ``predict``, or a results table (results.csv, segment.csv, explain.csv) with cxrtriage's columns.
    """
    folder = Path(folder)
    if LOCK_NAME in names:
        return f"it holds {LOCK_NAME}, the lock file of a cxrtriage run"
    if RUN_JSON in names:
        head = _head(folder / RUN_JSON).lstrip()
        if head.startswith("{") and '"tool_version"' in head:
            return f"it holds the {RUN_JSON} of a cxrtriage run"
    for name, header in TABLE_HEADERS.items():
        if name in names and _head(folder / name).startswith(header):
            return f"it holds the {name} of a cxrtriage run"
    return None


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_out_is_not_an_input(out_dir: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output folder that is also an input folder: the next run would read its outputs as inputs.

    (An output folder *inside* an input folder is fine: discovery skips it.)

    Raises:
        ConfigError: ``out_dir`` is one of the input folders.
    """
    out = Path(out_dir)
    for p in inputs:
        if Path(p).is_dir() and _same_folder(out, Path(p)):
            raise ConfigError(f"--out {out} is also an INPUT folder: its results, masks and heat maps would be read "
                              f"as inputs by the next run; write into a subfolder (e.g. --out {out / 'out'}) or "
                              "another folder")
