"""``cxrtriage serve``: a DICOM node that stores what it receives, and scores each study once it is complete.

The parts, in the order an instance meets them:

1. the Storage SCP (``cxrtriage.node.scp``) hands each accepted instance to ``NodeService.receive``;
2. the spool (``cxrtriage.node.spool``) writes it durably; only then is the sender told "stored";
3. the study assembler holds the instances of each study until none arrived for ``study_timeout`` seconds;
4. the scoring loop (this process's main thread) scores the complete studies, several at once when several are
   ready, through predict's own stages (``cxrtriage.pipeline.incremental``): selection, scoring, triage, and
   ``--lungs``/``--heatmaps``/``--report``/``--dicom`` when asked; each batch is committed to the journal, then
   the results tables and the worklist are brought up to date;
5. with ``--forward``, the DICOM results go to the outbox (``cxrtriage.node.outbox``), which sends them back.

At start, before listening: batches committed but not finished are published again, and every instance left in
the spool without a journaled row (a crash, a kill, a power cut) is queued as a complete study, ahead of anything
new. An instance whose SOP Instance UID is in the spool already, or was scored, is acknowledged and not stored or
scored again.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cxrtriage.errors import ConfigError
from cxrtriage.node.outbox import Outbox
from cxrtriage.node.scp import (
    OUT_OF_RESOURCES,
    PROCESSING_FAILURE,
    SUCCESS,
    Answer,
    ReceivedInstance,
    ScpSettings,
    shown,
    start_scp,
    study_uid_of_file,
)
from cxrtriage.node.spool import SPOOL_DIR, Spool, StoreStatus
from cxrtriage.outdir import lock_output
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.incremental import Batch, IncrementalRun
from cxrtriage.pipeline.journal import FileIdentity
from cxrtriage.report.send import Destination
from cxrtriage.results import PRIORITY_LEVELS

log = logging.getLogger(__name__)

NO_STUDY = "(no StudyInstanceUID)"  # the instances without one are one study for the study timeout


@dataclass(frozen=True, slots=True)
class ServeConfig:
    """Every option of ``cxrtriage serve``: the scoring (``predict``, whose inputs are the spool) and the node."""

    predict: PredictConfig
    scp: ScpSettings = field(default_factory=ScpSettings)
    study_timeout: float = 30.0  # a study is complete when none of its instances arrived for this long
    forward: Destination | None = None  # where the DICOM results go back to (C-STORE), through the outbox
    retry_seconds: float = 10.0  # first retry of a failed forward; doubles up to retry_max_seconds
    retry_max_seconds: float = 600.0
    min_free_mb: int = 500  # below this much free disk space, instances are refused (out of resources)
    max_batch: int = 256  # instances scored together at most (several complete studies)

    def __post_init__(self) -> None:
        if not 0 < self.study_timeout <= 86400:
            raise ConfigError(f"--study-timeout {self.study_timeout}: must be more than 0 and at most 86400 seconds")
        if not 0 < self.retry_seconds <= self.retry_max_seconds:
            raise ConfigError(f"--retry-seconds {self.retry_seconds} must be more than 0 and at most --retry-max-seconds "
                              f"{self.retry_max_seconds}")
        if self.min_free_mb < 0:
            raise ConfigError(f"--min-free-mb {self.min_free_mb}: must be 0 or more")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch {self.max_batch}: must be at least 1")
        if self.forward is not None and not self.predict.dicom_on:
            raise ConfigError("--forward sends the DICOM results: it needs --dicom")

    @staticmethod
    def spool_of(out_dir: Path) -> Path:
        return Path(out_dir) / SPOOL_DIR


@dataclass(frozen=True, slots=True)
class ServeInfo:
    """Where a node listens and writes, once it is ready."""

    host: str
    port: int
    aet: str
    out_dir: Path
    recovered: int  # instances left in the spool by the previous run, queued first


@dataclass
class _Study:
    paths: list[Path] = field(default_factory=list)
    last: float = -math.inf  # time.monotonic() of the last instance; -inf: complete at once (recovered)


class StudyAssembler:
    """The instances of each study until it is complete: no new instance for ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._studies: dict[str, _Study] = {}
        self._cond = threading.Condition()

    def add(self, study: str, path: Path, *, complete: bool = False) -> int:
        """Add an instance; returns how many the study holds now."""
        with self._cond:
            s = self._studies.setdefault(study, _Study())
            s.paths.append(path)
            if not complete:
                s.last = time.monotonic()
            self._cond.notify_all()
            return len(s.paths)

    def waiting(self) -> int:
        with self._cond:
            return sum(len(s.paths) for s in self._studies.values())

    def take(self, max_paths: int, wait: float) -> list[tuple[str, list[Path]]]:
        """The complete studies (longest waiting first; at most ``max_paths`` instances unless one study alone has
        more), waiting up to ``wait`` seconds for one to complete."""
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                now = time.monotonic()
                ready = sorted((s.last, key) for key, s in self._studies.items() if now - s.last >= self.timeout)
                if ready:
                    taken: list[tuple[str, list[Path]]] = []
                    n = 0
                    for _, key in ready:
                        size = len(self._studies[key].paths)
                        if taken and n + size > max_paths:
                            break
                        taken.append((key, self._studies.pop(key).paths))
                        n += size
                    return taken
                if now >= deadline:
                    return []
                next_complete = min((s.last + self.timeout for s in self._studies.values()), default=math.inf)
                self._cond.wait(max(0.01, min(deadline, next_complete) - now))


class NodeService:
    """The spool, the assembler, the scoring loop and the outbox of one node (see the module docstring)."""

    def __init__(self, config: ServeConfig, run: IncrementalRun, spool: Spool, outbox: Outbox | None) -> None:
        self.config = config
        self.run = run
        self.spool = spool
        self.outbox = outbox
        self.studies = StudyAssembler(config.study_timeout)
        self.recovered = 0

    # ------------------------------------------------------------------ receiving (SCP threads)

    def receive(self, instance: ReceivedInstance) -> Answer:
        result = self.spool.store(instance.sop_instance_uid, instance.data)
        uid, study = shown(instance.sop_instance_uid), shown(instance.study_instance_uid or NO_STUDY)
        if result.status is StoreStatus.DUPLICATE:
            log.info("instance %s of study %s: a duplicate (already received), acknowledged and not scored again", uid,
                     study)
            return Answer(SUCCESS, duplicate=True)
        if result.status is StoreStatus.NO_SPACE:
            log.error("instance %s refused (0x%04X, out of resources): %s; free disk space under %s", uid,
                      OUT_OF_RESOURCES, result.detail, self.spool.root)
            return Answer(OUT_OF_RESOURCES)
        if result.status is StoreStatus.FAILED or result.path is None:
            log.error("instance %s refused (0x%04X): cannot write it to the spool (%s)", uid, PROCESSING_FAILURE,
                      result.detail)
            return Answer(PROCESSING_FAILURE)
        n = self.studies.add(instance.study_instance_uid or NO_STUDY, result.path)
        log.debug("instance %s stored: study %s holds %d instance(s)", uid, study, n)
        return Answer(SUCCESS)

    # ------------------------------------------------------------------ start

    def recover(self) -> None:
        """Finish what a crash interrupted: publish the batches committed but not done, queue the spool's leftovers."""
        if self.outbox is not None:
            self.outbox.recover(self.run.journal.done)
        for batch in self.run.undone():
            log.info("batch %d: committed before the previous run stopped; its reports and outbox entries are "
                     "written now", batch.number)
            self._publish(batch)
        committed = set(self.run.committed_paths())
        files = self.spool.recover(known_names=[Path(p).name for p in committed])
        left = [f for f in files if str(f) not in committed]
        studies = set()
        for f in left:
            study = study_uid_of_file(f) or NO_STUDY
            studies.add(study)
            self.studies.add(study, f, complete=True)
        self.recovered = len(left)
        if left:
            log.warning("spool: %d instance(s) of %d study(ies) received before the previous run stopped and not yet "
                        "scored; they are scored first", len(left), len(studies))

    # ------------------------------------------------------------------ scoring (main thread)

    def loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            ready = self.studies.take(self.config.max_batch, wait=0.5)
            if ready:
                self.process(ready)

    def process(self, studies: list[tuple[str, list[Path]]]) -> Batch:
        """Score complete studies as one batch, commit it, publish it."""
        t0 = time.perf_counter()
        paths = [str(p) for _, ps in studies for p in ps]
        for study, ps in studies:
            log.debug("study %s: complete with %d instance(s)", shown(study), len(ps))
        identities = {p: FileIdentity.of(p) for p in paths}  # a spool file never changes after its rename
        records = self.run.score(paths)
        t_scored = time.perf_counter()
        batch = self.run.commit(records, identities)
        seconds = time.perf_counter() - t0
        log.debug("batch %d: scored in %.2f s, committed in %.2f s", batch.number, t_scored - t0,
                  time.perf_counter() - t_scored)
        for key, entries in batch.studies().items():
            statuses = [str(e.row.get("status")) for e in entries]
            priorities = [str(e.row.get("priority") or "") for e in entries]
            top = next((p.value for p in PRIORITY_LEVELS if p.value in priorities), "none")
            log.info("study %s: %d instance(s) in batch %d: scored %d, excluded %d, failed %d; highest image priority %s",
                     shown(key), len(entries), batch.number, statuses.count("scored"), statuses.count("excluded"),
                     statuses.count("failed"), top)
        log.info("batch %d: %d instance(s) of %d study(ies) scored and committed in %.1f s (%.1f images/s)",
                 batch.number, len(paths), len(studies), seconds, len(paths) / max(seconds, 1e-9))
        self._publish(batch)
        return batch

    def _publish(self, batch: Batch) -> None:
        published = self.run.publish(batch)
        for error in published.errors:
            log.warning("batch %d: %s", batch.number, error)
        if self.outbox is not None:
            self.outbox.stage(batch.number, list(published.dicom_files))
        self.run.mark_done(batch)
        if self.outbox is not None:
            self.outbox.release(batch.number)
            if published.dicom_files:
                log.info("batch %d: %d DICOM result(s) queued for %s:%d", batch.number, len(published.dicom_files),
                         self.outbox.destination.host, self.outbox.destination.port)


def run_serve(config: ServeConfig, *, stop: threading.Event | None = None,
              on_ready: Callable[[ServeInfo], None] | None = None) -> None:
    """Run a node until ``stop`` is set (or an exception, e.g. the CLI's signal handler, ends it).

    The output folder is locked for the node's whole life. Raises what ``IncrementalRun`` raises before scoring
    (``ModelError``, ``ConfigError``: a folder of another command or other settings), ``ConfigError`` when the port
    cannot be bound, ``OutputError`` when the folder cannot be written.
    """
    out = Path(config.predict.out_dir)
    stop = stop or threading.Event()
    with lock_output(out, "serve"):
        run = IncrementalRun(config.predict, command="serve")
        try:
            spool = Spool(out, min_free_bytes=config.min_free_mb * 2**20)
            outbox = None
            if config.forward is not None:
                outbox = Outbox(out, config.forward, retry_seconds=config.retry_seconds,
                                retry_max_seconds=config.retry_max_seconds)
            service = NodeService(config, run, spool, outbox)
            run.warm_up()
            service.recover()
            server = start_scp(config.scp, service.receive)
            try:
                if outbox is not None:
                    outbox.start()
                log.info("listening on %s:%d as '%s'; results in %s", server.host, server.port, config.scp.aet, out)
                if on_ready is not None:
                    on_ready(ServeInfo(server.host, server.port, config.scp.aet, out, service.recovered))
                service.loop(stop)
            finally:
                server.stop()
                if outbox is not None:
                    outbox.stop()
        finally:
            run.close()
