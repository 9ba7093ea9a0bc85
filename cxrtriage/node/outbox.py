"""The outbox of ``cxrtriage serve --forward``: DICOM results sent back (C-STORE), retried with back-off, kept on disk.

Each object to send has a *ticket* (``OUT/outbox/ready/<batch>/<n>.json``: the file, attempts, the next try). A batch's
tickets are written (and flushed to disk) under ``staged/<batch>/`` while the batch is published, and the folder is
renamed to ``ready/`` only after the journal marks the batch done; at start, staged tickets of a batch marked done
are released, the others dropped (the batch is published again, which stages them anew). So every object is queued
exactly once, whatever crash comes between.

A sender thread sends every ticket that is due over one association. A sent object's ticket is removed; a failed
one is tried again after ``retry_seconds``, doubling up to ``retry_max_seconds``. The tickets survive a restart. An
object goes out once, except when the node dies between the receiver's "stored" and the removal of its ticket: it is
then sent again (the same SOP Instance UID, which a PACS stores once).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrtriage.files import atomic_write, fsync_dir
from cxrtriage.report.send import Destination, SendResult, send_files

log = logging.getLogger(__name__)

OUTBOX_DIR = "outbox"
Sender = Callable[[list[Path], Destination], list[SendResult]]


@dataclass(frozen=True, slots=True)
class Ticket:
    path: Path  # the ticket file
    file: Path  # the DICOM object to send
    attempts: int
    next_at: float  # time.time() of the next try
    last_error: str

    def to_json(self, out_dir: Path) -> dict[str, Any]:
        return {"file": os.path.relpath(self.file, out_dir), "attempts": self.attempts, "next_at": self.next_at,
                "last_error": self.last_error}


class Outbox:
    """Tickets on disk and the thread that sends them (see the module docstring)."""

    def __init__(self, out_dir: str | Path, destination: Destination, *, retry_seconds: float = 10.0,
                 retry_max_seconds: float = 600.0, send: Sender = send_files) -> None:
        self.out_dir = Path(out_dir)
        self.root = self.out_dir / OUTBOX_DIR
        self.staged = self.root / "staged"
        self.ready = self.root / "ready"
        self.failed = self.root / "failed"
        self.destination = destination
        self.retry_seconds = retry_seconds
        self.retry_max_seconds = max(retry_max_seconds, retry_seconds)
        self._send = send
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        for d in (self.staged, self.ready, self.failed):
            d.mkdir(parents=True, exist_ok=True)
        fsync_dir(self.root)

    # ------------------------------------------------------------------ queueing

    def recover(self, done: Collection[int]) -> None:
        """At start: release the staged tickets of batches marked done, drop the others (they are staged again)."""
        for folder in sorted(self.staged.iterdir()):
            if folder.name.isdigit() and int(folder.name) in done:
                self._rename(folder, self.ready / folder.name)
            else:
                shutil.rmtree(folder, ignore_errors=True)
        fsync_dir(self.staged)

    def stage(self, batch: int, files: Sequence[Path]) -> None:
        """Write the tickets of a batch's objects (not sent before ``release``); the objects are flushed to disk too."""
        folder = self.staged / str(batch)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        now = time.time()
        for i, f in enumerate(files):
            _fsync_file(f)
            ticket = Ticket(folder / f"{i:04d}.json", Path(f), 0, now, "")
            atomic_write(ticket.path, json.dumps(ticket.to_json(self.out_dir)), fsync=True)
        fsync_dir(self.staged)

    def release(self, batch: int) -> None:
        """Hand a staged batch to the sender (after the journal marked it done)."""
        folder = self.staged / str(batch)
        if folder.is_dir():
            self._rename(folder, self.ready / str(batch))
            fsync_dir(self.staged)
        self._wake.set()

    def _rename(self, src: Path, dst: Path) -> None:
        if dst.exists():  # released before, then staged again by a crash: the earlier tickets stand
            shutil.rmtree(src, ignore_errors=True)
            return
        os.rename(src, dst)
        fsync_dir(dst.parent)

    def tickets(self) -> list[Ticket]:
        """Every ticket waiting to be sent, oldest batch first."""
        out: list[Ticket] = []
        for folder in sorted(self.ready.iterdir(), key=lambda p: (len(p.name), p.name)):
            for path in sorted(folder.glob("*.json")):
                try:
                    data = json.loads(path.read_text(encoding="utf-8"))
                    out.append(Ticket(path, self.out_dir / str(data["file"]), int(data.get("attempts", 0)),
                                      float(data.get("next_at", 0.0)), str(data.get("last_error", ""))))
                except (OSError, ValueError, KeyError, TypeError) as exc:
                    log.error("outbox: ticket %s is damaged (%s); moved to %s", path, exc, self.failed)
                    self._move_to_failed(path)
        return out

    def _move_to_failed(self, path: Path) -> None:
        try:
            os.replace(path, self.failed / f"{path.parent.name}-{path.name}")
        except OSError:
            pass

    # ------------------------------------------------------------------ sending

    def send_due(self, now: float | None = None) -> float | None:
        """Send every ticket that is due, over one association; returns when the next one is due (None: none left)."""
        now = time.time() if now is None else now
        tickets = self.tickets()
        due = [t for t in tickets if t.next_at <= now]
        missing = [t for t in due if not t.file.is_file()]
        for t in missing:
            log.error("outbox: %s is gone and cannot be sent; its ticket is moved to %s", t.file, self.failed)
            self._move_to_failed(t.path)
        if missing:
            tickets = [t for t in tickets if t not in missing]
            due = [t for t in due if t not in missing]
            _remove_empty({t.path.parent for t in missing})
        if due:
            results = {r.path: r for r in self._send([t.file for t in due], self.destination)}
            sent = 0
            for t in due:
                r = results.get(t.file)
                if r is not None and r.ok:
                    t.path.unlink(missing_ok=True)
                    sent += 1
                    continue
                attempts = t.attempts + 1
                delay = min(self.retry_max_seconds, self.retry_seconds * 2 ** (attempts - 1))
                error = r.status if r is not None else "no result"
                atomic_write(t.path, json.dumps(Ticket(t.path, t.file, attempts, time.time() + delay, error)
                                                .to_json(self.out_dir)), fsync=True)
            _remove_empty({t.path.parent for t in due})
            d = self.destination
            if sent == len(due):
                log.info("forward: %d object(s) sent to %s:%d (%s)", sent, d.host, d.port, d.called_aet)
            else:
                failed = next((results[t.file].status for t in due if t.file in results and not results[t.file].ok), "")
                log.warning("forward: %d of %d object(s) sent to %s:%d (%s); the others are tried again later (%s)",
                            sent, len(due), d.host, d.port, d.called_aet, failed)
            tickets = self.tickets()
        return min((t.next_at for t in tickets), default=None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="cxrtriage-outbox", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                next_at = self.send_due()
            except Exception as exc:  # a bug here must not stop the node; the tickets stay on disk
                log.error("forward: internal error (%s: %s); trying again in %.0f s", type(exc).__name__, exc,
                          self.retry_seconds)
                next_at = time.time() + self.retry_seconds
            wait = 1.0 if next_at is None else min(max(next_at - time.time(), 0.05), 60.0)
            self._wake.wait(wait)
            self._wake.clear()


def _remove_empty(folders: set[Path]) -> None:
    """Remove the batch folders that hold no ticket any more (the batch is sent)."""
    for folder in folders:
        try:
            folder.rmdir()  # fails, as it should, while a ticket is left
        except OSError:
            pass


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
