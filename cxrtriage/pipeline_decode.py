"""The decode stage of the pipelines: probe, select, read and preprocess files in worker processes.

``decode_stream`` turns a stream of paths into a stream of ``Decoded`` items in input order,
with at most ``window`` files in flight, so memory stays flat however many files there are.
Every per-file problem becomes a ``failed``/``excluded`` item; a decoder that crashes its worker
process is isolated by re-running the in-flight files one at a time in a fresh pool.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from cxrtriage.errors import CxrTriageError
from cxrtriage.preprocess import ModelInput, PreprocessRecipe, to_model_input
from cxrtriage.types import Image2D

log = logging.getLogger(__name__)

OK, EXCLUDED, FAILED = "ok", "excluded", "failed"


@dataclass(frozen=True, slots=True)
class DecodeTask:
    """One file to examine; ``rules`` is a ``cxrtriage.io.SelectionRules`` (None = the io defaults)."""

    index: int
    path: str
    recipe: PreprocessRecipe
    rules: Any = None
    keep_image: bool = False
    image_checks: bool = False  # run cxrtriage.measure.quality.image_checks here, where the image is


@dataclass(frozen=True, slots=True)
class Decoded:
    """What the decode stage learnt about one file.

    ``meta`` holds the results-table facts known before inference (input_kind, study_key, UIDs,
    view, rows, columns, pixel_spacing_mm). ``model_input`` is set when ``status`` is ``ok``;
    ``image`` only when the task asked to keep it.
    """

    index: int
    path: str
    status: str
    reason: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    model_input: ModelInput | None = None
    image: Image2D | None = None
    seconds: float = 0.0
    image_checks: tuple[Any, ...] | None = None  # QualityChecks, when the task asked for them


def probe_meta(probe: Any) -> dict[str, Any]:
    """Results-table facts from a ``cxrtriage.io.Probe`` (header only, no pixels)."""
    from cxrtriage.io import study_key

    d = probe.dicom
    return {
        "input_kind": probe.kind.value,
        "study_key": study_key(probe),
        "study_instance_uid": (d.study_instance_uid or None) if d else None,
        "series_instance_uid": (d.series_instance_uid or None) if d else None,
        "sop_instance_uid": (d.sop_instance_uid or None) if d else None,
        "view": (d.view_position or None) if d else None,
        "rows": probe.rows,
        "columns": probe.columns,
        "pixel_spacing_mm": None,
    }


def examine(task: DecodeTask) -> Decoded:
    """Probe, select, read and preprocess one file; never raises for a problem of the file."""
    from cxrtriage.io import assess

    t0 = time.perf_counter()
    meta: dict[str, Any] = {}
    try:
        a = assess(task.path, task.rules) if task.rules is not None else assess(task.path)
        meta = probe_meta(a.probe)
        if a.selection.status != "scored" or a.image is None:
            status = EXCLUDED if a.selection.status == "excluded" else FAILED
            return Decoded(task.index, task.path, status, a.selection.reason, meta, seconds=time.perf_counter() - t0)
        image = a.image
        meta.update(rows=image.shape[0], columns=image.shape[1],
                    pixel_spacing_mm=list(image.pixel_spacing_mm) if image.pixel_spacing_mm else None)
        mi = to_model_input(image, task.recipe)
        checks = None
        if task.image_checks:
            from cxrtriage.measure.quality import image_checks

            checks = image_checks(image)
        reason = "; ".join([a.selection.reason, *image.notes])
        return Decoded(task.index, task.path, OK, reason, meta, mi, image if task.keep_image else None,
                       time.perf_counter() - t0, checks)
    except CxrTriageError as exc:
        return Decoded(task.index, task.path, FAILED, str(exc), meta, seconds=time.perf_counter() - t0)
    except MemoryError:
        return Decoded(task.index, task.path, FAILED, f"{task.path}: not enough memory to decode this image", meta)
    except Exception as exc:  # a decoder bug on one odd file must not stop the run
        msg = f"{task.path}: unexpected {type(exc).__name__} while reading ({str(exc)[:200]}); please report this file"
        return Decoded(task.index, task.path, FAILED, msg, meta, seconds=time.perf_counter() - t0)


def _context() -> Any:
    """forkserver on POSIX (workers never inherit onnxruntime's threads), spawn elsewhere."""
    if sys.platform != "win32" and "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["cxrtriage.pipeline_decode", "cxrtriage.io", "cxrtriage.measure.quality"])
        return ctx
    return mp.get_context("spawn")


def prestart(workers: int) -> None:
    """Start the process that forks the decode workers now, so that its imports overlap with model loading."""
    if workers <= 0:
        return
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _crashed(task: DecodeTask) -> Decoded:
    return Decoded(task.index, task.path, FAILED,
                   f"{task.path}: the decoder crashed its worker process on this file (corrupt or hostile file?)")


class WorkerStartError(CxrTriageError):
    """The decode worker processes cannot run at all (environment problem, not a file problem)."""


def _ping() -> int:
    return os.getpid()


def _init_worker() -> None:
    """One decode process = one core: OpenCV's own thread pool would only compete with onnxruntime."""
    import cv2

    cv2.setNumThreads(1)


def _start_pool(workers: int, ctx: Any) -> ProcessPoolExecutor:
    """A pool whose workers are known to start: a crash after this is a file's fault, not the environment's.

    Used after a crash; the first pool of a run starts without this check so that starting the
    workers overlaps with the first files (a first pool that breaks is replaced by a checked one).
    """
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    try:
        pool.submit(_ping).result()
    except BrokenProcessPool as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        raise WorkerStartError(
            "the decode worker processes exit as soon as they start (see the messages above); "
            "run with --workers 0 to decode in the main process"
        ) from exc
    return pool


def decode_stream(
    tasks: Iterable[DecodeTask],
    *,
    workers: int,
    window: int,
    fn: Callable[[DecodeTask], Decoded] = examine,
) -> Iterator[Decoded]:
    """Examine ``tasks`` with ``workers`` processes (0 = in this process), yielding results in input order.

    ``fn`` (a module-level function, so that workers can import it) does the per-file work.
    """
    if workers <= 0:
        for t in tasks:
            yield fn(t)
        return
    ctx = _context()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker)
    pending: deque[tuple[DecodeTask, Future[Decoded]]] = deque()
    source = iter(tasks)
    window = max(window, workers)

    def fill() -> None:
        while len(pending) < window:
            task = next(source, None)
            if task is None:
                return
            pending.append((task, pool.submit(fn, task)))

    def restart() -> ProcessPoolExecutor:
        pool.shutdown(wait=False, cancel_futures=True)
        return _start_pool(workers, ctx)

    try:
        fill()
        while pending:
            task, fut = pending[0]
            try:
                result = fut.result()
            except BrokenProcessPool:
                # Some file in flight killed a worker: re-run each in-flight file alone in a fresh pool.
                retry = [t for t, _ in pending]
                pending.clear()
                pool = restart()
                for t in retry:
                    try:
                        yield pool.submit(fn, t).result()
                    except BrokenProcessPool:
                        log.warning("%s: decoder crashed its worker process; marked failed", t.path)
                        pool = restart()
                        yield _crashed(t)
                fill()
                continue
            pending.popleft()
            fill()
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
