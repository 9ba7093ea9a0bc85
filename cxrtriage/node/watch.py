"""``cxrtriage watch DIR --out OUT``: a hot folder; every file dropped into DIR is scored once, across restarts.

**Polling, not file-system events.** The folder is walked every ``poll_seconds`` (as ``predict`` walks its inputs:
hidden names skipped, output folders never read). Events (inotify through the ``watchdog`` package) would only save
the walk, and the walk is needed anyway: a file is ready only when its size and mtime have stayed the same for
``settle_seconds`` (an event says a file changed, never that its writer is done), files dropped while the watcher was
down raise no event, and the hot folders hospitals use are often network shares (SMB/NFS), where events for writes
made by other machines never arrive. Polling needs no extra dependency and behaves the same everywhere.

**When a file is ready.** A file named ``*.part``, ``*.partial`` or ``*.tmp`` (or hidden, ``.name``) is still being
written and never read; its rename to the final name makes it visible (the safe convention for exporters that can
follow it). Any other file is ready once its size and mtime have not changed for ``settle_seconds``.

**Exactly once.** Ready files are scored in batches and committed to ``OUT/journal.jsonl`` with their size and mtime
(``cxrtriage.pipeline.incremental``); a restart skips every file committed as it is now. A file that changes later
(same name, new content) is scored again, and its new row replaces the old one. Input files are never modified or
moved.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cxrtriage.errors import ConfigError
from cxrtriage.outdir import lock_output
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.engine import check_inputs, discover_paths
from cxrtriage.pipeline.incremental import IncrementalRun
from cxrtriage.pipeline.journal import FileIdentity

log = logging.getLogger(__name__)

IN_PROGRESS_SUFFIXES = (".part", ".partial", ".tmp")


@dataclass(frozen=True, slots=True)
class WatchConfig:
    """Every option of ``cxrtriage watch``: the scoring (``predict``, whose one input is the folder) and the polling."""

    predict: PredictConfig
    poll_seconds: float = 2.0
    settle_seconds: float = 5.0  # a file is ready once its size and mtime stayed the same this long
    max_batch: int = 256  # files scored together at most

    def __post_init__(self) -> None:
        if len(self.predict.inputs) != 1 or not Path(self.predict.inputs[0]).is_dir():
            raise ConfigError(f"watch needs one folder to watch, got {', '.join(map(str, self.predict.inputs))}")
        if not 0 < self.poll_seconds <= 3600:
            raise ConfigError(f"--poll {self.poll_seconds}: must be more than 0 and at most 3600 seconds")
        if not 0 <= self.settle_seconds <= 3600:
            raise ConfigError(f"--settle {self.settle_seconds}: must be within 0..3600 seconds")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch {self.max_batch}: must be at least 1")


@dataclass
class StableFiles:
    """Which files have kept the same size and mtime for ``settle`` seconds."""

    settle: float
    _seen: dict[str, tuple[FileIdentity | None, float]] = field(default_factory=dict)

    def ready(self, path: str, identity: FileIdentity | None, now: float) -> bool:
        seen = self._seen.get(path)
        if seen is None or seen[0] != identity:
            self._seen[path] = (identity, now)
            return self.settle <= 0
        return now - seen[1] >= self.settle

    def forget(self, path: str) -> None:
        self._seen.pop(path, None)

    def keep_only(self, paths: set[str]) -> None:
        """Forget files that are gone."""
        for p in [p for p in self._seen if p not in paths]:
            del self._seen[p]


def in_progress(path: str) -> bool:
    return path.lower().endswith(IN_PROGRESS_SUFFIXES)


def ready_files(folder: Path, out_dir: Path, run: IncrementalRun, stable: StableFiles,
                limit: int) -> list[tuple[str, FileIdentity | None]]:
    """The files of ``folder`` that are ready and not committed as they are now (at most ``limit``)."""
    now = time.monotonic()
    ready: list[tuple[str, FileIdentity | None]] = []
    seen: set[str] = set()
    for path in discover_paths([folder], out_dir):
        if in_progress(path):
            continue
        seen.add(path)
        identity = FileIdentity.of(path)
        if run.finished(path, identity):
            stable.forget(path)
            continue
        if stable.ready(path, identity, now) and len(ready) < limit:
            ready.append((path, identity))
    stable.keep_only(seen)
    return ready


def run_watch(config: WatchConfig, *, stop: threading.Event | None = None,
              on_ready: Callable[[int], None] | None = None) -> None:
    """Watch until ``stop`` is set (or an exception, e.g. the CLI's signal handler, ends it).

    ``on_ready`` gets the number of files committed by earlier runs once watching starts.
    """
    folder = Path(config.predict.inputs[0])
    out = Path(config.predict.out_dir)
    check_inputs([folder], out)
    stop = stop or threading.Event()
    with lock_output(out, "watch"):
        run = IncrementalRun(config.predict, command="watch")
        try:
            run.warm_up()
            for batch in run.undone():
                published = run.publish(batch)
                for error in published.errors:
                    log.warning("batch %d: %s", batch.number, error)
                run.mark_done(batch)
            stable = StableFiles(config.settle_seconds)
            log.info("watching %s every %.1f s (files ready after %.1f s unchanged); results in %s", folder,
                     config.poll_seconds, config.settle_seconds, out)
            if on_ready is not None:
                on_ready(len(run.committed_paths()))
            while not stop.is_set():
                ready = ready_files(folder, out, run, stable, config.max_batch)
                if not ready:
                    stop.wait(config.poll_seconds)
                    continue
                t0 = time.perf_counter()
                paths = [p for p, _ in ready]
                batch = run.commit(run.score(paths), dict(ready))
                counts = batch.counts()
                log.info("batch %d: %d file(s) scored %d, excluded %d, failed %d in %.1f s", batch.number, len(paths),
                         counts["scored"], counts["excluded"], counts["failed"], time.perf_counter() - t0)
                published = run.publish(batch)
                for error in published.errors:
                    log.warning("batch %d: %s", batch.number, error)
                run.mark_done(batch)
        finally:
            run.close()
