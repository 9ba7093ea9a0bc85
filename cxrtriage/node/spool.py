"""The spool of ``cxrtriage serve``: every received instance on disk, durably, before the sender hears "stored".

Instances live at ``OUT/spool/<xy>/<SOPInstanceUID>.dcm``, ``xy`` being the first two hex digits of a hash of the
file name: 256 folders made (and flushed to disk) once, so that no folder grows without bound and no instance needs a
new folder, whose entry would cost one more flush. Each instance is written under ``OUT/spool/.incoming/`` first,
flushed to disk (``fsync``), renamed into its folder, and that folder flushed too: two flushes, and only then is
success returned to the sender. A crash before the rename leaves a file in ``.incoming/`` that was
never acknowledged (removed at the next start: the sender still has it and resends it); after the rename the
instance is on disk and is scored, once, whatever happens next.

When the disk has less than the reserve left (``min_free_bytes``), or a write fails for want of space, the instance is
refused (the SCP answers out-of-resources) instead of being acknowledged. Scored instances stay in the spool: they are
the sources that the results, reports and DICOM results refer to, as the input folder is for ``predict``.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from cxrtriage.files import fit_name, fsync_dir, safe_name, write_all

log = logging.getLogger(__name__)

SPOOL_DIR = "spool"
INCOMING_DIR = ".incoming"
SHARDS = 256
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class StoreStatus(Enum):
    STORED = "stored"
    DUPLICATE = "duplicate"  # the same SOP Instance UID is already in the spool (or was scored): not stored again
    NO_SPACE = "no space"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StoreResult:
    status: StoreStatus
    path: Path | None = None
    detail: str = ""


def instance_name(sop_instance_uid: str) -> str:
    """The file name of an instance in the spool (a UID is already safe; anything else is made safe)."""
    return fit_name(safe_name(sop_instance_uid or "no-sop-uid"), ".dcm")


def shard(name: str) -> str:
    """The spool folder of an instance file name (stable, spread evenly)."""
    return hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:2]


class Spool:
    """The instances received by one node (see the module docstring); ``store`` is safe to call from many threads."""

    def __init__(self, out_dir: str | Path, *, min_free_bytes: int = 0) -> None:
        self.root = Path(out_dir) / SPOOL_DIR
        self.incoming = self.root / INCOMING_DIR
        self.min_free_bytes = min_free_bytes
        self._lock = threading.Lock()
        self._names: set[str] = set()  # instances stored, being stored, or scored earlier
        self.incoming.mkdir(parents=True, exist_ok=True)
        for n in range(SHARDS):
            (self.root / f"{n:02x}").mkdir(exist_ok=True)
        fsync_dir(self.root.parent)
        fsync_dir(self.root)

    def recover(self, known_names: Iterable[str] = ()) -> list[Path]:
        """Remove what was never acknowledged (``.incoming``) and return every instance in the spool, sorted.

        ``known_names``: instance file names scored before (their spool file may have been cleaned up since): a
        copy that arrives again is a duplicate.
        """
        for leftover in self.incoming.iterdir():
            try:
                leftover.unlink()
            except OSError as exc:
                log.warning("spool: cannot remove the unacknowledged %s (%s)", leftover.name, exc.strerror or exc)
        files = sorted(p for folder in self.root.iterdir() if folder.is_dir() and not folder.name.startswith(".")
                       for p in folder.iterdir() if p.suffix == ".dcm" and p.is_file())
        with self._lock:
            self._names = {p.name for p in files} | set(known_names)
        return files

    def store(self, sop_instance_uid: str, data: bytes) -> StoreResult:
        """Write one instance durably (see the module docstring); never raises for a problem of the disk."""
        name = instance_name(sop_instance_uid)
        final = self.root / shard(name) / name
        with self._lock:
            if name in self._names:
                return StoreResult(StoreStatus.DUPLICATE, final)
            self._names.add(name)  # a second copy arriving meanwhile is a duplicate
        tmp = self.incoming / f"{name}.{threading.get_ident()}.part"
        try:
            free = shutil.disk_usage(self.root).free
            if free - len(data) < self.min_free_bytes:
                raise OSError(errno.ENOSPC, f"{free // 2**20} MiB free, the reserve is {self.min_free_bytes // 2**20} MiB")
            # 0o600: the spool holds patient data; only the node's own user (and its decode workers) read it.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
            try:
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            fsync_dir(final.parent)
        except OSError as exc:
            with self._lock:
                self._names.discard(name)
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            status = StoreStatus.NO_SPACE if exc.errno in _NO_SPACE else StoreStatus.FAILED
            return StoreResult(status, None, exc.strerror or str(exc))
        return StoreResult(StoreStatus.STORED, final)
