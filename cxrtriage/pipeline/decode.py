"""The decode stage: probe, select, read and preprocess files in worker processes, in input order.

``decode_stream`` turns a stream of ``DecodeTask``s into a stream of ``Decoded`` items in input order,
with at most ``window`` files in flight, so memory stays flat however many files there are.
Every per-file problem becomes a ``failed``/``excluded`` record; a decoder that crashes its worker
process is isolated by re-running the in-flight files one at a time in a fresh pool. Without workers
(``workers=0``) the files are examined one at a time in a child forked from this process (`ForkedExaminer`,
POSIX), so a decoder's hard crash is still one file's ``failed`` row; where ``fork`` does not exist (Windows) they
are examined here.

No worker outlives the run: a stream that is abandoned (an error, an interrupt) kills its workers at once, and
a worker dies with the main process even when that is killed outright (kill -9): see `_init_worker`.
"""

from __future__ import annotations

import ctypes
import faulthandler
import logging
import multiprocessing as mp
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

import cv2

from cxrtriage.errors import ConfigError, CxrTriageError
from cxrtriage.io import DEFAULT_RULES, Probe, SelectionRules, assess, study_key
from cxrtriage.measure.quality import QualityCheck, image_checks
from cxrtriage.pipeline.startup import worker_context as _context
from cxrtriage.preprocess import ModelInput, PixelNeeds, PreprocessRecipe, to_model_input
from cxrtriage.results import SOURCE_COLUMNS, ImageRecord, Status
from cxrtriage.types import Image2D

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DecodeTask:
    """One file to examine: what to read it for (``recipe``), by which rules, and what to send back.

    ``needs`` says how far the image may be reduced while it is decoded (JPEG 2000 resolution levels, JPEG DCT
    scaling: see `cxrtriage.io.reduced`); None decodes every image in full. ``extra_recipes`` are further model
    inputs to make here, beside the classifier's (the lung segmenter's), so that neither the image nor its
    preprocessing has to reach the inference process.
    """

    index: int
    path: str
    recipe: PreprocessRecipe
    rules: SelectionRules = DEFAULT_RULES
    keep_image: bool = False
    image_checks: bool = False  # run cxrtriage.measure.quality.image_checks here, where the image is
    needs: PixelNeeds | None = None
    extra_recipes: tuple[PreprocessRecipe, ...] = ()


@dataclass(frozen=True, slots=True)
class Decoded:
    """What the decode stage learnt about one file.

    ``record`` holds what is known before inference (status, reason, input facts); a ``scored`` record has
    ``model_input`` set; ``image`` only when the task asked to keep it.
    """

    index: int
    record: ImageRecord
    model_input: ModelInput | None = None
    image: Image2D | None = None
    seconds: float = 0.0
    image_checks: tuple[QualityCheck, ...] | None = None  # when the task asked for them
    extra_inputs: tuple[ModelInput, ...] = ()  # one per ``DecodeTask.extra_recipes``, for a scored file

    @property
    def path(self) -> str:
        return self.record.path

    @property
    def ok(self) -> bool:
        return self.record.status is Status.SCORED


def probe_record(path: str, probe: Probe | None, status: Status, reason: str | None, *,
                 not_an_image: bool = False) -> ImageRecord:
    """The record of a file from its probe (header only, no pixels).

    A file that is no image at all (``Selection.not_an_image``: a README beside the images, a DICOM SR) gets no study
    key: it is none of the images of the study its folder or StudyInstanceUID names (``ImageRecord.in_study``).
    """
    if probe is None:
        return ImageRecord(path=path, status=status, reason=reason)
    d = probe.dicom
    source: dict[str, str | None] = {k: getattr(d, k) or None for k in SOURCE_COLUMNS} if d else {}
    return ImageRecord(
        path=path, status=status, reason=reason or None, input_kind=probe.kind.value,
        study_key=None if not_an_image else study_key(probe),
        study_instance_uid=(d.study_instance_uid or None) if d else None,
        series_instance_uid=(d.series_instance_uid or None) if d else None,
        sop_instance_uid=(d.sop_instance_uid or None) if d else None,
        view=(d.view_position or None) if d else None, rows=probe.rows, columns=probe.columns,
        patient_age=d.patient_age_years if d else None,
    ).replace(**source)


def examine(task: DecodeTask) -> Decoded:
    """Probe, select, read and preprocess one file; never raises for a problem of the file."""
    t0 = time.perf_counter()
    probe: Probe | None = None
    try:
        a = assess(task.path, task.rules, max_scale=task.needs)
        probe = a.probe
        if a.selection.status is not Status.SCORED or a.image is None:
            status = Status.EXCLUDED if a.selection.status is Status.EXCLUDED else Status.FAILED
            return Decoded(task.index, probe_record(task.path, probe, status, a.selection.reason,
                                                    not_an_image=a.selection.not_an_image),
                           seconds=time.perf_counter() - t0)
        image = a.image
        record = probe_record(task.path, probe, Status.SCORED, "; ".join([a.selection.reason, *image.notes])).replace(
            rows=image.shape[0], columns=image.shape[1], pixel_spacing_mm=image.pixel_spacing_mm,
            decoded_at="full" if image.scale == 1 else f"1/{image.scale}")
        mi = to_model_input(image, task.recipe)
        extra = tuple(to_model_input(image, r) for r in task.extra_recipes)
        checks = tuple(image_checks(image)) if task.image_checks else None
        return Decoded(task.index, record, mi, image if task.keep_image else None, time.perf_counter() - t0, checks,
                       extra)
    except CxrTriageError as exc:
        reason = str(exc)
    except MemoryError:
        reason = f"{task.path}: not enough memory to decode this image"
    except Exception as exc:  # a decoder bug on one odd file must not stop the run
        reason = (f"{task.path}: unexpected {type(exc).__name__} while reading ({str(exc)[:200]}); "
                  "please report this file")
    except BaseException as exc:
        # Native extensions raise BaseException subclasses (a Rust panic is pyo3's PanicException): one file's,
        # as long as it is no interrupt or exit. Caught here, it never reaches the pool, which cannot pickle it.
        if isinstance(exc, KeyboardInterrupt | SystemExit | GeneratorExit):
            raise
        reason = (f"{task.path}: a decoder stopped on an internal error ({type(exc).__name__}: {str(exc)[:200]}); "
                  "the file is probably corrupt")
    return Decoded(task.index, probe_record(task.path, probe, Status.FAILED, reason), seconds=time.perf_counter() - t0)


def crashed(task: DecodeTask) -> Decoded:
    """The item of a file whose decoder killed its worker process."""
    reason = f"{task.path}: the decoder crashed its worker process on this file (corrupt or hostile file?)"
    return Decoded(task.index, ImageRecord(path=task.path, status=Status.FAILED, reason=reason))


def unreturned(task: DecodeTask, exc: BaseException) -> Decoded:
    """The item of a file whose worker raised, or returned something that could not come back (e.g. unpicklable)."""
    reason = (f"{task.path}: the decode worker could not return a result for this file ({type(exc).__name__}: "
              f"{str(exc)[:200]}); please report this file")
    return Decoded(task.index, ImageRecord(path=task.path, status=Status.FAILED, reason=reason))


class WorkerStartError(ConfigError):
    """The decode worker processes cannot run at all (environment problem, not a file problem): run with
    ``--workers 0``."""


def _ping() -> int:
    return os.getpid()


_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WATCH_SECONDS = 1.0


WORKER_NICENESS = 19
"""How much lower a decode process's CPU priority is than the main process's (``os.nice``; see `_init_worker`)."""


def _init_worker(main_pid: int) -> None:
    """Set up a decode process: one core, a lower priority, no own reaction to Ctrl-C, and no life beyond the main
    process.

    One decode process = one core: OpenCV's own thread pool would only compete with onnxruntime. Lower priority:
    the decode processes share the cores with onnxruntime's threads in the main process. At equal priority the
    scheduler preempts those threads in the middle of a batch, and each parallel step of the model waits for its
    slowest thread; niced, the decoders run in what inference leaves (the main process waits for their images between
    batches). Measured side by side (96 RG1 copies per encoding, 2-3 runs each, medians of 3): uncompressed DICOM 130 ->
    142 images/s, JPEG baseline 124 -> 132, J2K lossy 74 -> 76, PNG and J2K lossless unchanged, ``--lungs`` 18.0 ->
    18.7. Ctrl-C reaches the whole process group: the main process decides what it means and stops the workers
    itself.
    """
    cv2.setNumThreads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()
    nice = getattr(os, "nice", None)  # not on Windows
    if nice is not None:
        try:
            nice(WORKER_NICENESS)
        except OSError:  # a lower priority is always allowed on POSIX; should a sandbox refuse it, run as we are
            pass
    _tie_to_main_process(main_pid)


def _tie_to_main_process(main_pid: int) -> None:
    """Make this worker end when the main process ends, however it ends (kill -9 included).

    - A forkserver worker inherits the write end of the pipe by which the forkserver learns that the main process
      is gone (so that a worker could start processes of its own, which decode workers never do). While any worker
      holds it, the forkserver never exits, nor does the resource tracker; and a worker waiting for its next file
      never learns that nobody will send one: all of them outlived a killed main process by hours. Closing it here
      lets the forkserver exit as soon as the main process is gone.
    - On Linux the kernel then kills the worker as its parent (the forkserver, or the main process under
      ``spawn``) ends: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, which works even in the middle of a long decode.
    - Elsewhere (and as a second line on Linux) a daemon thread checks every second that the parent and the
      main process are still there, and ends the worker when they are not.
    """
    fs = getattr(forkserver, "_forkserver", None)  # private: CPython keeps the inherited fd there (3.8-3.14)
    alive_fd = getattr(fs, "_forkserver_alive_fd", None)
    if isinstance(alive_fd, int):
        try:
            os.close(alive_fd)
        except OSError:
            pass
        fs._forkserver_alive_fd = None  # type: ignore[union-attr]
    parent = os.getppid()
    if sys.platform.startswith("linux") and not _arm_death_signal():  # unusual builds: the watch thread remains
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable; decode workers rely on the watch thread")
    if os.name != "posix":  # Windows: os.kill(pid, 0) would *terminate* the main process; nothing to watch with
        return
    if not _is_alive(main_pid):  # the main process ended before the death signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(parent, main_pid), name="cxrtriage-watch-main", daemon=True).start()


FORK_ISOLATION = hasattr(os, "fork") and sys.platform != "win32"
"""Whether ``workers=0`` examines files in a child forked from this process (POSIX) or in this process (Windows)."""

CHILD_TIMEOUT_S = 600.0
"""A forked child still examining one file after this long is killed and the file is failed. Decode workers start
clean (forkserver); a child forked from a process that runs onnxruntime's and the progress bar's threads could in
principle inherit a lock that one of them held, and one file must never hang the run."""

_HEADER = 8  # each message on the pipes: its length (8 bytes, little endian), then a pickle


class ForkedExaminer:
    """``workers=0``: one child forked from this process examines the files one at a time, so that a hard crash in
    native decoder code (a segfault, an abort) is that file's ``failed`` row, not the end of the run.

    Forking needs no ``__main__`` guard and no imports (what ``workers=0`` is for): the child starts as a copy of
    this process, reads pickled tasks from one pipe and writes pickled items to another, and leaves with
    ``os._exit`` (none of this process's exit handlers, buffers or temporary files are touched). A child that dies
    is replaced by a fresh fork for the next file. Files are still examined one after the other, in input order.
    """

    def __init__(self, fn: Callable[[DecodeTask], Decoded]) -> None:
        self.fn = fn
        self._pid: int | None = None
        self._send = -1
        self._receive = -1

    def examine(self, task: DecodeTask) -> Decoded:
        message = pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            try:
                if self._pid is None:
                    self._start()
                _write_message(self._send, message)
            except BrokenPipeError:  # the idle child is gone (killed from outside): a fresh one takes the file
                self.close(kill=True)
                self._start()
                _write_message(self._send, message)
            data, timed_out = _read_message(self._receive, CHILD_TIMEOUT_S)
        except BaseException:  # an interrupt while waiting: the child is not wanted any more
            self.close(kill=True)
            raise
        if timed_out:
            self.close(kill=True)
            log.warning("%s: decoding did not finish within %.0f s; child killed, marked failed", task.path,
                        CHILD_TIMEOUT_S)
            reason = (f"{task.path}: decoding did not finish within {CHILD_TIMEOUT_S:.0f} s (corrupt or hostile "
                      "file?); the process decoding it was stopped")
            return Decoded(task.index, ImageRecord(path=task.path, status=Status.FAILED, reason=reason))
        if data is None:  # the pipe closed before a whole item came: the child died on this file
            self.close(kill=True)
            log.warning("%s: decoder crashed the process decoding it; marked failed", task.path)
            return crashed(task)
        try:
            item = pickle.loads(data)
        except Exception as exc:  # noqa: BLE001 - cannot happen with an intact pipe; one file's problem if it does
            return unreturned(task, exc)
        return item if isinstance(item, Decoded) else unreturned(task, TypeError(f"got a {type(item).__name__}"))

    def close(self, *, kill: bool = False) -> None:
        """End the child: it leaves when its task pipe closes; ``kill`` stops it at once (it is mid-file)."""
        pid, self._pid = self._pid, None
        if pid is None:
            return
        for fd in (self._send, self._receive):
            try:
                os.close(fd)
            except OSError:
                pass
        if kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:  # already reaped
            pass

    def _start(self) -> None:
        task_r, task_w = os.pipe()
        item_r, item_w = os.pipe()
        parent = os.getpid()
        # OpenCV's thread pool does not survive a fork: a child that inherits it waits forever for pool threads that
        # only exist in the parent (seen as a hang in the child's first OpenCV call). With one thread OpenCV has no
        # pool threads; the parent gets its pool back right after the fork.
        cv_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        pid = -1
        try:
            pid = os.fork()
        finally:
            if pid != 0:
                cv2.setNumThreads(cv_threads)
        if pid == 0:
            code = 1
            try:
                os.close(task_w)
                os.close(item_r)
                _child_setup(parent)
                _child_loop(self.fn, task_r, item_w)
                code = 0
            finally:
                os._exit(code)
        os.close(task_r)
        os.close(item_w)
        self._pid, self._send, self._receive = pid, task_w, item_r


def _child_setup(parent: int) -> None:
    """Make a forked child independent of what it inherited: signals, the CLI's log handlers, its parent's life."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the parent decides, and kills this child
    # The CLI's log handler writes through the progress bar's console, whose lock another thread of the parent may
    # have held at the fork: log like a decode worker instead (Python's last-resort handler: warnings to stderr).
    logging.root.handlers.clear()
    faulthandler.disable()  # a decoder's crash is reported by the parent, as for a decode worker (no native dump)
    keep_freed_memory()
    _die_with(parent)


def _child_loop(fn: Callable[[DecodeTask], Decoded], tasks: int, items: int) -> None:
    while True:
        data, _ = _read_message(tasks, None)
        if data is None:  # the parent closed the pipe: no more files
            return
        task: DecodeTask = pickle.loads(data)
        try:
            item = fn(task)
        except BaseException as exc:  # noqa: BLE001 - whatever it is, it is this file's; the parent reports it
            item = unreturned(task, exc)
        try:
            out = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable value in a record
            out = pickle.dumps(unreturned(task, exc), protocol=pickle.HIGHEST_PROTOCOL)
        _write_message(items, out)


def _write_message(fd: int, data: bytes) -> None:
    view = memoryview(len(data).to_bytes(_HEADER, "little") + data)
    while view:
        view = view[os.write(fd, view):]


def _read_message(fd: int, timeout: float | None) -> tuple[bytes | None, bool]:
    """One message from ``fd``: (its bytes, False); (None, False) when the pipe closes first; (None, True) when
    ``timeout`` seconds pass first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    buf = bytearray()
    need = _HEADER
    length: int | None = None
    while len(buf) < need:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None, True
            ready, _, _ = select.select([fd], [], [], min(left, 1.0))
            if not ready:
                continue
        chunk = os.read(fd, min(need - len(buf), 1 << 20))
        if not chunk:
            return None, False
        buf += chunk
        if length is None and len(buf) >= _HEADER:
            length = int.from_bytes(buf[:_HEADER], "little")
            need = _HEADER + length
    return bytes(buf[_HEADER:]), False


def _die_with(parent: int) -> None:
    """End this forked child as soon as ``parent`` ends (kill -9 included): the death signal on Linux; elsewhere the
    child ends when it reads the end of its task pipe, which closes with the parent."""
    if sys.platform.startswith("linux"):
        _arm_death_signal()
    if os.getppid() != parent:  # the parent ended before the death signal was armed
        os._exit(1)


_M_TRIM_THRESHOLD = -1  # glibc <malloc.h> mallopt parameters
_M_MMAP_THRESHOLD = -3
HEAP_UP_TO = 32 << 20
"""Allocations up to this size come from the decode process's heap (glibc's largest mmap threshold on 64-bit)."""
KEEP_FREED = 256 << 20
"""Freed heap memory a decode process keeps for its next image instead of returning it to the kernel."""


def keep_freed_memory() -> bool:
    """Let a decode process reuse its last image's buffers for the next image (glibc only; False elsewhere).

    Why: every image allocates the same few large buffers (the file's bytes, decoded samples, float pixels: 1-30 MB
    each). glibc serves buffers above its mmap threshold with fresh pages and unmaps them on free, so each image paid
    a page fault per 4 KiB and the kernel's zeroing of every page again: on the 7 MB uncompressed RG1 chest ~1900
    faults and 6 ms of system time per image (8.0 -> 1.8 ms with this; `benchmarks/bench_decode.py`). Taken from
    the heap and kept after free, they are reused. The cost is memory held between images: at most ``KEEP_FREED``
    bytes of free heap per decode process; buffers above ``HEAP_UP_TO`` (a 30+ MB image) are still unmapped on free.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # no glibc (musl, macOS, Windows): the allocator's own behaviour stays
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_UP_TO)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_FREED))


def _arm_death_signal() -> bool:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills this process when its parent ends (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no usable libc
        return False
    return True


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else (the pid was reused: the main process is gone)
        return False
    return True


def _watch(parent: int, main_pid: int) -> None:
    while True:
        time.sleep(_WATCH_SECONDS)
        if os.getppid() != parent or not _is_alive(main_pid):
            os._exit(1)  # nothing to clean up: the main process, which owned every result, is gone


def _new_pool(workers: int, ctx: BaseContext) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),))


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop an abandoned pool now: its files are not wanted any more, and waiting for a worker busy on a huge file
    would hold up an interrupted run for minutes."""
    kill = getattr(pool, "kill_workers", None)  # Python 3.14+
    if kill is not None:
        kill()
        return
    processes = list((getattr(pool, "_processes", None) or {}).values())  # private, but the only way before 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        try:
            proc.kill()
        except (OSError, ValueError, AttributeError):  # already gone or closed
            pass


def _start_pool(workers: int, ctx: BaseContext) -> ProcessPoolExecutor:
    """A pool whose workers are known to start: a crash after this is a file's fault, not the environment's.

    Used after a crash; the first pool of a run starts without this check so that starting the
    workers overlaps with the first files (a first pool that breaks is replaced by a checked one).
    """
    pool = _new_pool(workers, ctx)
    try:
        pool.submit(_ping).result()
    except BrokenProcessPool as exc:
        pool.shutdown(wait=False, cancel_futures=True)
        raise WorkerStartError(
            "the decode worker processes exit as soon as they start (see the messages above); "
            f"run with --workers 0 (workers=0) to decode in the main process{script_hint()}"
        ) from exc
    return pool


GUARD_HINT = ('a Python script that calls cxrtriage with decode workers must make that call under '
              '`if __name__ == "__main__":` (each worker process imports the script again, as multiprocessing does), '
              'or pass workers=0')


def script_hint() -> str:
    """A hint naming the ``__main__`` guard when the main module is a script file (the usual cause of workers that
    die at start when cxrtriage is used as a library); '' under the command line or an interactive session."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        return ""
    return f"; {GUARD_HINT}"


def importing_main_in_worker() -> bool:
    """True while a worker process being started re-imports the caller's script (no ``__main__`` guard)."""
    return bool(getattr(mp.current_process(), "_inheriting", False))


class DecodePool:
    """Decode worker processes kept from one stream to the next (``serve`` and ``watch`` score batch after batch;
    starting a pool for each costs a few tenths of a second). ``close`` ends them; a stream that crashes a worker or
    is abandoned replaces or ends them, and the next stream starts fresh ones."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ctx = _context()
        self._pool: ProcessPoolExecutor | None = None

    def get(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = _new_pool(self.workers, self._ctx)
        return self._pool

    def start(self) -> None:
        """Start the workers now (and check that they run), not with the first file."""
        if self._pool is None:
            self._pool = _start_pool(self.workers, self._ctx)

    def restart(self) -> ProcessPoolExecutor:
        """A fresh pool whose workers are known to start (after a crash)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = None
        self._pool = _start_pool(self.workers, self._ctx)
        return self._pool

    def kill(self) -> None:
        """End the workers now (their files in flight are not wanted any more)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            _kill_workers(pool)

    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def decode_stream(
    tasks: Iterable[DecodeTask],
    *,
    workers: int,
    window: int,
    fn: Callable[[DecodeTask], Decoded] = examine,
    pool: DecodePool | None = None,
) -> Iterator[Decoded]:
    """Examine ``tasks`` with ``workers`` processes (0 = in this process), yielding results in input order.

    ``fn`` (a module-level function, so that workers can import it) does the per-file work. ``pool``: worker
    processes to use, and to leave running when the stream is done (else the stream starts and ends its own).
    """
    if workers <= 0:
        if not FORK_ISOLATION:
            for t in tasks:
                yield fn(t)
            return
        child = ForkedExaminer(fn)
        try:
            for t in tasks:
                yield child.examine(t)
        finally:
            child.close()
        return
    own = pool is None
    holder = DecodePool(workers) if pool is None else pool
    executor = holder.get()
    pending: deque[tuple[DecodeTask, Future[Decoded]]] = deque()
    source = iter(tasks)
    window = max(window, holder.workers)

    def fill() -> None:
        while len(pending) < window:
            task = next(source, None)
            if task is None:
                return
            fut: Future[Decoded]
            try:
                fut = executor.submit(fn, task)
            except BrokenProcessPool as exc:
                # A file in flight killed a worker after the head of the queue had finished: queue this one as
                # broken too, so that the loop below re-runs every file in flight (this one included) alone.
                fut = Future()
                fut.set_exception(exc)
            pending.append((task, fut))

    finished = False
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
                executor = holder.restart()
                for t in retry:
                    try:
                        yield executor.submit(fn, t).result()
                    except BrokenProcessPool:
                        log.warning("%s: decoder crashed its worker process; marked failed", t.path)
                        executor = holder.restart()
                        yield crashed(t)
                    except Exception as exc:
                        yield unreturned(t, exc)
                fill()
                continue
            except Exception as exc:  # the worker's result or exception could not be sent back (PicklingError...)
                result = unreturned(task, exc)
            pending.popleft()
            fill()
            yield result
        finished = True
    finally:
        if not finished:  # an error, an interrupt, or the consumer closed the stream: no file in flight is wanted
            holder.kill()
        elif own:
            holder.close()
