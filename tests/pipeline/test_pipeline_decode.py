"""Tests of the parallel decode stage: order, bounded window, crash isolation, parity with serial decode."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from factories import write_dicom

from cxrtriage.pipeline import decode, startup
from cxrtriage.pipeline.decode import Decoded, DecodePool, DecodeTask, WorkerStartError, decode_stream, examine
from cxrtriage.preprocess import PreprocessRecipe
from cxrtriage.results import ImageRecord, Status

RECIPE = PreprocessRecipe(size=16)


def _double(task: DecodeTask) -> Decoded:
    """Stand-in for `examine` that kills its worker process on a file named 'crash'."""
    if Path(task.path).name == "crash":
        os._exit(3)
    return Decoded(task.index, ImageRecord(task.path, Status.SCORED, reason=str(os.getpid())))


def _always_crash(task: DecodeTask | None = None) -> Decoded:
    os._exit(3)


def _tasks(names: list[str]) -> list[DecodeTask]:
    return [DecodeTask(i, f"/x/{n}", RECIPE) for i, n in enumerate(names)]


def test_parallel_results_come_back_in_input_order() -> None:
    names = [f"f{i}" for i in range(25)]
    out = list(decode_stream(_tasks(names), workers=2, window=5, fn=_double))
    assert [Path(d.path).name for d in out] == names
    assert all(int(d.record.reason or 0) != os.getpid() for d in out)  # decoded in worker processes


@pytest.mark.slow
def test_a_crashing_file_is_isolated_and_the_others_survive() -> None:
    names = ["a", "b", "crash", "c", "d", "e"]
    out = list(decode_stream(_tasks(names), workers=2, window=4, fn=_double))
    assert [Path(d.path).name for d in out] == names
    status = {Path(d.path).name: d.record.status for d in out}
    assert status.pop("crash") is Status.FAILED
    assert set(status.values()) == {Status.SCORED}
    assert "crashed its worker process" in next(d.record.reason or "" for d in out if d.path.endswith("crash"))


def _slow_crash(task: DecodeTask) -> Decoded:
    """Stand-in for `examine`: a file named 'crash' kills its worker a moment after the files before it finished."""
    if Path(task.path).name == "crash":
        time.sleep(0.3)
        os._exit(3)
    return Decoded(task.index, ImageRecord(task.path, Status.SCORED))


@pytest.mark.slow
def test_a_worker_crashing_while_the_consumer_is_busy_loses_no_file() -> None:
    # The pool breaks while the caller holds a result: the next file at the head has already finished, so it
    # returns fine, and only the files queued after it meet the broken pool (they used to raise BrokenProcessPool
    # out of predict instead of being re-run).
    stream = decode_stream(_tasks(["a", "b", "crash", "c", "d", "e", "f"]), workers=2, window=3, fn=_slow_crash)
    out = [next(stream)]
    time.sleep(2.0)  # 'b' finishes, then 'crash' kills its worker
    out += list(stream)
    assert [Path(d.path).name for d in out] == ["a", "b", "crash", "c", "d", "e", "f"]
    assert [d.record.status for d in out].count(Status.FAILED) == 1 and out[2].record.status is Status.FAILED


@pytest.mark.slow
def test_every_file_crashing_still_gives_one_failed_row_each() -> None:
    out = list(decode_stream(_tasks(["a", "b"]), workers=1, window=2, fn=_always_crash))
    assert [d.record.status for d in out] == [Status.FAILED] * 2


@pytest.mark.slow
def test_workers_that_cannot_start_are_a_run_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "_ping", _always_crash)  # pickled by reference: the workers run _always_crash
    with pytest.raises(WorkerStartError, match="--workers 0"):
        list(decode_stream(_tasks(["a", "b"]), workers=1, window=2, fn=_always_crash))


def test_parallel_examine_equals_serial(tmp_path: Path) -> None:
    paths = [write_dicom(tmp_path / f"{i}.dcm", rows=20 + i, cols=30) for i in range(4)]
    (tmp_path / "junk").write_bytes(b"\x00junk")
    tasks = [DecodeTask(i, str(p), RECIPE) for i, p in enumerate([*paths, tmp_path / "junk"])]
    serial = list(decode_stream(tasks, workers=0, window=1))
    parallel = list(decode_stream(tasks, workers=2, window=3))
    ok, failed = Status.SCORED, Status.FAILED
    assert [d.record.status for d in serial] == [ok, ok, ok, ok, failed] == [d.record.status for d in parallel]
    for s, p in zip(serial, parallel, strict=True):
        assert s.record == p.record
        if s.model_input is not None:
            assert p.model_input is not None
            np.testing.assert_array_equal(s.model_input.array, p.model_input.array)
            assert s.image is None


def test_examine_keeps_the_image_only_when_asked(tmp_path: Path) -> None:
    p = write_dicom(tmp_path / "a.dcm", rows=20, cols=30)
    assert examine(DecodeTask(0, str(p), RECIPE, keep_image=True)).image is not None
    d = examine(DecodeTask(0, str(p), RECIPE))
    assert d.image is None and d.model_input is not None and d.model_input.array.shape == (1, 16, 16)


# ----------------------------------------------------------------------------- workers=0: one forked child


def _segfault_on_crash(task: DecodeTask) -> Decoded:
    """Stand-in for `examine`: native code reading address 0 (a segfault) on a file named 'crash'."""
    if Path(task.path).name == "crash":
        import ctypes

        ctypes.string_at(0)
    return Decoded(task.index, ImageRecord(task.path, Status.SCORED, reason=str(os.getpid())))


class _Panic(BaseException):
    """Like pyo3's PanicException: a BaseException that is not an interrupt."""


def _panic_or_sleep(task: DecodeTask) -> Decoded:
    name = Path(task.path).name
    if name == "panic":
        raise _Panic("boom")
    if name == "slow":
        time.sleep(30)
    return Decoded(task.index, ImageRecord(task.path, Status.SCORED, reason=str(os.getpid())))


@pytest.mark.skipif(not decode.FORK_ISOLATION, reason="no fork on this platform: workers=0 decodes in-process")
def test_a_file_that_is_no_image_gets_no_study_key(tmp_path: Path) -> None:
    """A README or a DICOM SR beside a study's images is none of them: no study key (`ImageRecord.in_study`)."""
    study = "1.2.826.0.1.3680043.8.498.77"
    write_dicom(tmp_path / "lat.dcm", rows=8, cols=8, view="LL", study_uid=study)
    write_dicom(tmp_path / "sr.dcm", rows=8, cols=8, study_uid=study, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11")
    (tmp_path / "README.md").write_text("how these files were made\n")
    (tmp_path / "cut.dcm").write_bytes(b"\x00" * 10)
    got = {name: examine(DecodeTask(0, str(tmp_path / name), RECIPE)).record
           for name in ("lat.dcm", "sr.dcm", "README.md", "cut.dcm")}
    assert got["lat.dcm"].status is Status.EXCLUDED and got["lat.dcm"].study_key == study and got["lat.dcm"].in_study
    assert got["cut.dcm"].status is Status.FAILED and got["cut.dcm"].study_key == f"folder:{tmp_path}"
    for name in ("sr.dcm", "README.md"):
        r = got[name]
        assert r.status is Status.EXCLUDED and r.study_key is None and not r.in_study, name
    assert got["sr.dcm"].study_instance_uid == study and got["sr.dcm"].input_kind == "dicom"  # still said


def test_without_workers_files_are_examined_in_one_forked_child_in_order() -> None:
    names = [f"f{i}" for i in range(6)]
    out = list(decode_stream(_tasks(names), workers=0, window=1, fn=_double))
    assert [Path(d.path).name for d in out] == names
    pids = {d.record.reason for d in out}
    assert len(pids) == 1 and pids != {str(os.getpid())}  # one child, not this process


@pytest.mark.skipif(not decode.FORK_ISOLATION, reason="no fork on this platform: workers=0 decodes in-process")
@pytest.mark.parametrize("fn", [_double, _segfault_on_crash], ids=["exit", "segfault"])
def test_without_workers_a_crashing_decoder_fails_only_its_file(fn: object) -> None:
    names = ["a", "crash", "b", "crash", "c"]
    out = list(decode_stream(_tasks(names), workers=0, window=1, fn=fn))  # type: ignore[arg-type]
    assert [Path(d.path).name for d in out] == names
    assert [d.record.status for d in out] == [Status.SCORED, Status.FAILED, Status.SCORED, Status.FAILED, Status.SCORED]
    assert "crashed its worker process" in (out[1].record.reason or "")
    assert out[0].record.reason != out[2].record.reason != out[4].record.reason  # a fresh child after each crash


@pytest.mark.skipif(not decode.FORK_ISOLATION, reason="no fork on this platform: workers=0 decodes in-process")
def test_without_workers_a_panic_and_a_hang_are_one_files_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "CHILD_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    out = list(decode_stream(_tasks(["panic", "a", "slow", "b"]), workers=0, window=1, fn=_panic_or_sleep))
    assert time.monotonic() - t0 < 15
    assert [d.record.status for d in out] == [Status.FAILED, Status.SCORED, Status.FAILED, Status.SCORED]
    assert "_Panic: boom" in (out[0].record.reason or "")
    assert "did not finish within 1 s" in (out[2].record.reason or "")


@pytest.mark.skipif(not decode.FORK_ISOLATION, reason="no fork on this platform: workers=0 decodes in-process")
def test_without_workers_a_child_killed_while_idle_is_replaced_and_an_abandoned_stream_reaps_it() -> None:
    stream = decode_stream(_tasks(["a", "b", "c"]), workers=0, window=1, fn=_double)
    first = next(stream)
    child = int(first.record.reason or 0)
    os.kill(child, 9)
    deadline = time.monotonic() + (10 if Path("/proc").is_dir() else 0.5)
    while time.monotonic() < deadline:  # until it is dead (its pipe ends closed) but not reaped: the examiner reaps it
        if Path("/proc").is_dir() and Path(f"/proc/{child}/stat").read_text().split()[2] == "Z":
            break
        time.sleep(0.01)
    second = next(stream)
    assert second.record.status is Status.SCORED and int(second.record.reason or 0) != child
    stream.close()  # the consumer stops early: the child must not outlive the stream
    with pytest.raises(ChildProcessError):
        os.waitpid(int(second.record.reason or 0), os.WNOHANG)


def test_workers_start_with_the_readers_already_imported() -> None:
    # the forkserver imports them once; a worker that imported them itself paid ~0.2-0.35 s before its first image.
    # The question is asked with a builtin (eval), so that unpickling the task imports nothing into the worker.
    ask = f"[m for m in {startup.WORKER_PRELOAD!r} if m in __import__('sys').modules]"
    pool = DecodePool(1)
    try:
        got = pool.get().submit(eval, ask).result(timeout=120)  # the worker's first task: it has read no file
    finally:
        pool.close()
    assert "cxrtriage.io.dicom" in startup.WORKER_PRELOAD
    assert got == list(startup.WORKER_PRELOAD)


@pytest.mark.skipif(not hasattr(os, "nice"), reason="os.nice: POSIX only")
def test_decode_workers_run_at_a_lower_priority_than_the_main_process() -> None:
    # onnxruntime's threads in the main process go first; the decoders use what inference leaves
    pool = DecodePool(1)
    try:
        worker = pool.get().submit(os.nice, 0).result(timeout=120)
    finally:
        pool.close()
    assert worker == min(19, os.nice(0) + decode.WORKER_NICENESS)
