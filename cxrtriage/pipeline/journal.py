"""The journal of an output folder: which inputs are finished (path, size, mtime) and their rows, crash-safe.

``OUT/journal.jsonl`` is what lets a run pick up where a killed one stopped (``predict --resume``) and what lets
``serve`` and ``watch`` score every input exactly once across restarts. It is append-only, one JSON object per line:

- the first line is the header: the command and the *fingerprint* of the run (model, results columns, the
  options and files that change a row); a run with another fingerprint may not continue the journal;
- ``{"batch": N, "entries": [...]}``: the inputs of one batch, each with its path, size, mtime, artefact stem
  and results row exactly as written. One line per batch, written with one ``write`` and flushed to disk
  (``fsync``) before the batch counts as finished: that line is the commit point;
- ``{"done": N}`` (``serve``, ``watch``): what follows the commit (reports, DICOM results, the outbox) is
  written for batch N as well.

A crash can leave at most a torn last line (no newline, or no valid JSON): it is cut off when the journal is
opened, and its batch is scored again. A damaged line before the last one is an error (a disk problem).
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrtriage.errors import ConfigError, OutputError
from cxrtriage.files import fsync_dir, write_all
from cxrtriage.pipeline.decode import Decoded
from cxrtriage.pipeline.engine import Finished

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """What says that a file is still the one that was scored: its size and modification time (ns)."""

    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | Path) -> FileIdentity | None:
        """The identity of ``path`` now (of the link itself when it dangles); None when it cannot be read."""
        try:
            st = os.stat(path)
        except OSError:
            try:
                st = os.lstat(path)
            except OSError:
                return None
        return cls(st.st_size, st.st_mtime_ns)

    def to_json(self) -> list[int]:
        return [self.size, self.mtime_ns]

    @classmethod
    def from_json(cls, value: Any) -> FileIdentity | None:
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return cls(value[0], value[1])
        return None


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One finished input: its path, its identity when it was scored, its artefact stem and its results row."""

    path: str
    identity: FileIdentity | None
    row: Mapping[str, Any]
    stem: str | None = None
    batch: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "id": None if self.identity is None else self.identity.to_json(), "stem": self.stem,
                "row": dict(self.row)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any], batch: int) -> JournalEntry:
        path, row = data.get("path"), data.get("row")
        if not isinstance(path, str) or not isinstance(row, dict):
            raise ValueError("an entry needs a 'path' and a 'row'")
        stem = data.get("stem")
        return cls(path, FileIdentity.from_json(data.get("id")), row, stem if isinstance(stem, str) else None, batch)


def file_digest(path: Path | None) -> str:
    """sha256 of an option file (rules, policy, site) for the fingerprint; "none" without one."""
    if path is None:
        return "none"
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as exc:  # the run itself reports the unreadable file; the fingerprint only needs to differ
        return f"unreadable ({exc.strerror or exc})"


def journal_command(out_dir: str | Path) -> str | None:
    """The command whose journal ``out_dir`` holds (from its first line), or None when it holds none."""
    try:
        with open(Path(out_dir) / JOURNAL_NAME, "rb") as f:
            header = json.loads(f.readline())
    except (OSError, ValueError):
        return None
    return str(header.get("command")) if isinstance(header, dict) and header.get("cxrtriage_journal") else None


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]


@dataclass
class Journal:
    """An open journal (see the module docstring): the finished inputs, and appending new batches."""

    path: Path
    command: str
    fingerprint: Mapping[str, Any]
    batches: dict[int, list[JournalEntry]] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)
    _latest: dict[str, JournalEntry] = field(default_factory=dict)
    _fd: int | None = None

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(cls, out_dir: str | Path, command: str, fingerprint: Mapping[str, Any]) -> Journal:
        """A new, empty journal in ``out_dir`` (any earlier one is replaced)."""
        journal = cls(Path(out_dir) / JOURNAL_NAME, command, dict(fingerprint))
        header = {"cxrtriage_journal": FORMAT, "command": command, "fingerprint": journal.fingerprint}
        tmp = journal.path.with_name(journal.path.name + ".partial")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                write_all(fd, (json.dumps(header, ensure_ascii=True) + "\n").encode("ascii"))
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, journal.path)
            fsync_dir(journal.path.parent)
        except OSError as exc:
            raise OutputError(f"{journal.path}: cannot write the journal ({exc.strerror or exc}); check the folder "
                              "is writable and the disk is not full") from exc
        journal._open_for_append()
        return journal

    @classmethod
    def open(cls, out_dir: str | Path, command: str, fingerprint: Mapping[str, Any], *,
             resume_hint: str) -> Journal:
        """The journal in ``out_dir``, to be continued by a run of ``command`` with ``fingerprint``.

        A torn last line (a crash while it was written) is cut off. ``resume_hint`` ends the error message
        when the journal belongs to another command or another configuration.

        Raises:
            ConfigError: the journal was written by another command, or with another fingerprint (the
                message names what differs).
            OutputError: the journal is damaged before its last line, or cannot be read or written.
        """
        path = Path(out_dir) / JOURNAL_NAME
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise OutputError(f"{path}: cannot read the journal ({exc.strerror or exc})") from exc
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # ``tail`` is what follows the last newline: a torn line, or b""
        good_bytes = len(raw) - len(tail)
        parsed: list[dict[str, Any]] = []
        for n, line in enumerate(complete, start=1):
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
            except ValueError as exc:
                if n == len(complete) and not tail:  # the last line, torn inside (a crash mid-write): cut it off
                    good_bytes -= len(line) + 1
                    break
                raise OutputError(f"{path}:{n}: the journal is damaged ({exc}); move it away to start afresh "
                                  "(every input is then scored again)") from exc
            parsed.append(obj)
        if not parsed or parsed[0].get("cxrtriage_journal") != FORMAT:
            raise OutputError(f"{path}: not a cxrtriage journal (format {FORMAT}); move it away or choose another --out")
        header = parsed[0]
        found_command = str(header.get("command", "?"))
        if found_command != command:
            raise ConfigError(f"{path.parent}: holds the journal of a `cxrtriage {found_command}` run, not of `{command}`; "
                              f"{resume_hint}")
        old = header.get("fingerprint") if isinstance(header.get("fingerprint"), dict) else {}
        assert isinstance(old, dict)
        diff = _differences(old, fingerprint)
        if diff:
            raise ConfigError(f"{path.parent}: the earlier run journaled there used other settings ({', '.join(diff)} "
                              f"differ); {resume_hint}")
        journal = cls(path, command, dict(fingerprint))
        for n, obj in enumerate(parsed[1:], start=2):
            try:
                if "batch" in obj:
                    batch = int(obj["batch"])
                    journal._add(batch, [JournalEntry.from_json(e, batch) for e in obj.get("entries", [])])
                elif "done" in obj:
                    journal.done.add(int(obj["done"]))
                else:
                    raise ValueError("neither a batch nor a done mark")
            except (TypeError, ValueError) as exc:
                raise OutputError(f"{path}:{n}: the journal is damaged ({exc}); move it away to start afresh") from exc
        if good_bytes < len(raw):
            log.warning("%s: the last line was cut off by a crash; its batch is scored again", path)
            try:
                os.truncate(path, good_bytes)
            except OSError as exc:
                raise OutputError(f"{path}: cannot repair the journal ({exc.strerror or exc})") from exc
        journal._open_for_append()
        return journal

    def _open_for_append(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise OutputError(f"{self.path}: cannot write the journal ({exc.strerror or exc})") from exc

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    # ------------------------------------------------------------------ reading

    def _add(self, batch: int, entries: list[JournalEntry]) -> None:
        self.batches[batch] = entries
        for e in entries:
            self._latest[e.path] = e

    @property
    def next_batch(self) -> int:
        return max(self.batches, default=0) + 1

    def finished(self, path: str, identity: FileIdentity | None) -> JournalEntry | None:
        """The entry of ``path`` when it was finished as it is now (same size and mtime), else None."""
        entry = self._latest.get(path)
        if entry is None or identity is None or entry.identity != identity:
            return None
        return entry

    def entry(self, path: str) -> JournalEntry | None:
        """The latest entry of ``path``, whatever its identity."""
        return self._latest.get(path)

    def entries(self) -> Iterator[JournalEntry]:
        """Every entry, in the order they were journaled."""
        for batch in sorted(self.batches):
            yield from self.batches[batch]

    def undone(self) -> list[int]:
        """Batches committed but not marked done (a crash came between the commit and the done mark)."""
        return sorted(b for b in self.batches if b not in self.done)

    # ------------------------------------------------------------------ writing

    def _append(self, obj: Mapping[str, Any]) -> None:
        if self._fd is None:
            raise OutputError(f"{self.path}: the journal is closed")
        data = (json.dumps(obj, ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")
        size = os.fstat(self._fd).st_size
        try:
            write_all(self._fd, data)
            os.fsync(self._fd)
        except OSError as exc:
            # Leave no torn line in the middle of the journal: the next append would follow it.
            try:
                os.ftruncate(self._fd, size)
            except OSError:
                log.error("%s: cannot cut off a half-written line after %s", self.path, exc)
            full = exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
            raise OutputError(f"{self.path}: cannot write the journal ({exc.strerror or exc})"
                              + ("; the disk is full" if full else "")) from exc

    def commit(self, entries: Sequence[JournalEntry]) -> int:
        """Append one batch (one line, flushed to disk) and return its number. Once this returns, the batch
        counts as finished whatever happens next."""
        batch = self.next_batch
        entries = [JournalEntry(e.path, e.identity, e.row, e.stem, batch) for e in entries]
        self._append({"batch": batch, "entries": [e.to_json() for e in entries]})
        self._add(batch, list(entries))
        return batch

    def mark_done(self, batch: int) -> None:
        """Record that everything after the commit of ``batch`` (reports, outbox) is written too."""
        self._append({"done": batch})
        self.done.add(batch)


# --------------------------------------------------------------------------- resuming a predict run


class ResumeStream:
    """Interleave the inputs a journal holds (``Finished``) with the decoding of the others, in input order.

    ``paths_to_decode`` gives the inputs to decode; ``merge`` puts their ``Decoded`` items back in place among the
    finished ones. The identity of each input is taken *before* it is decoded, so that a file changed while (or
    after) it was scored does not pass for the version that was scored.
    """

    def __init__(self, paths: Iterable[str], journal: Journal) -> None:
        self._paths = iter(paths)
        self._journal = journal
        self._slots: deque[Finished | None] = deque()  # in input order; None = an input this run decodes
        self.identities: dict[str, FileIdentity | None] = {}
        self.resumed = 0

    def paths_to_decode(self) -> Iterator[tuple[int, str]]:
        """(input index, path) of every input the journal does not hold as it is now."""
        for i, path in enumerate(self._paths):
            identity = FileIdentity.of(path)
            entry = self._journal.finished(path, identity)
            if entry is not None:
                self._slots.append(Finished(path, entry.row))
                self.resumed += 1
                continue
            self.identities[path] = identity
            self._slots.append(None)  # before the path is handed out: ``merge`` relies on it
            yield i, path

    def merge(self, decoded: Iterator[Decoded]) -> Iterator[Decoded | Finished]:
        """``decoded`` (the decode stream of ``paths_to_decode``) with the finished inputs put back in place."""
        try:
            for d in decoded:
                # The decoder took d's path from ``paths_to_decode``, so d's slot, and every slot before it, exists.
                while (slot := self._slots.popleft()) is not None:
                    yield slot
                yield d
            # ``decoded`` is exhausted, so ``paths_to_decode`` ran to its end: what is left is finished inputs.
            while self._slots:
                slot = self._slots.popleft()
                assert slot is not None
                yield slot
        finally:
            close = getattr(decoded, "close", None)
            if close is not None:
                close()
