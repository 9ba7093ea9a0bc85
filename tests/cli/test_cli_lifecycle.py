"""How a run starts and ends: one writer per output folder, no process left behind, documented exit codes.

The process tests start real `cxrtriage` processes (`slow_cli.py` slows every batch down so that there is
time to race, interrupt or kill a run), each with a timeout; the processes of a run are found in /proc by
the session the test started it in.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_tiny_classifier, make_tiny_segmenter
from typer.testing import CliRunner

import cxrtriage.pipeline.predict as predict_module
from cxrtriage.cli import app as app_module
from cxrtriage.cli import render
from cxrtriage.cli.app import app
from cxrtriage.errors import CxrTriageError, InputError
from cxrtriage.outdir import LOCK_NAME, lock_output, output_marker

REPO = Path(__file__).resolve().parents[2]
SLOW_CLI = Path(__file__).with_name("slow_cli.py")
LINUX = sys.platform.startswith("linux")


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_tiny_classifier(tmp_path / "models" / "clf")


def _pngs(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(folder / f"img{i:03d}.png"), (rng.random((24, 20)) * 255).astype(np.uint8))
    return folder


def _env(batch_seconds: float, gate: Path | None = None) -> dict[str, str]:
    path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = dict(os.environ, PYTHONPATH=path, CXRTRIAGE_TEST_BATCH_SECONDS=str(batch_seconds), COLUMNS="200",
               NO_COLOR="1")
    if gate is not None:
        env["CXRTRIAGE_TEST_GATE"] = str(gate)
    return env


def _slow_run(*args: str, batch_seconds: float, gate: Path | None = None, **popen: object) -> subprocess.Popen[str]:
    """`slow_cli.py` ARGS: every batch sleeps ``batch_seconds``, and waits for the file ``gate`` when given."""
    return subprocess.Popen([sys.executable, str(SLOW_CLI), *args], cwd=REPO, env=_env(batch_seconds, gate),
                            text=True, **popen)  # type: ignore[call-overload]


def _wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _session(sid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every live process of session ``sid``, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] not in ("Z", "X"):
            found.append((int(entry.name), cmdline))
    return found


def _kill_session(sid: int) -> None:
    for pid, _ in _session(sid):
        with suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


# --------------------------------------------------------------------------- row 4: one writer per output folder


@pytest.mark.slow
@pytest.mark.skipif(os.name != "posix", reason="output folders are locked with fcntl.flock (POSIX)")
def test_a_second_run_into_the_same_out_is_refused_and_the_first_completes(tmp_path: Path, model: Path) -> None:
    scans = _pngs(tmp_path / "scans", 24)
    out = tmp_path / "out"
    gate = tmp_path / "go"  # the first run scores nothing until the test has raced it
    first = _slow_run("predict", str(scans), "--out", str(out), "-m", str(model), "-w", "0", "-b", "2",
                      batch_seconds=0.05, gate=gate, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(lambda: f'"pid": {first.pid}' in _text(out / LOCK_NAME) or first.poll() is not None, 120,
                  "the first run to lock its output folder")
        assert first.poll() is None, "the first run ended before the second could race it"
        second = subprocess.run([sys.executable, "-m", "cxrtriage", "predict", str(scans), "--out", str(out), "-m",
                                 str(model), "-w", "0"], cwd=REPO, env=_env(0), capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 5, second.stderr
        [line] = _error_lines(second.stderr)
        assert str(out) in line and "another cxrtriage run" in line and f"pid {first.pid}" in line and "since" in line
        # segment and explain into the same folder are refused the same way, before loading any model
        seg = make_tiny_segmenter(tmp_path / "models" / "seg")
        for args in (["segment", str(scans), "--out", str(out), "-m", str(seg), "-w", "0"],
                     ["explain", str(scans), "--out", str(out), "--model", str(model), "--flagged"]):
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 5 and f"pid {first.pid}" in result.output, (args, result.output)
        assert first.poll() is None, "the refused runs must not have disturbed the first one"
        gate.touch()
        _, stderr = first.communicate(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.returncode == 0, stderr
    rows = _rows(out / "results.csv")
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in scans.iterdir())  # complete, each once
    assert {r["status"] for r in rows} == {"scored"}
    jsonl = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["path"] for r in jsonl] == [r["path"] for r in rows]
    assert sorted(p.name for p in out.iterdir()) == ["results.csv", "results.jsonl", "run.json", "worklist.csv"]


# --------------------------------------------------------------------------- row 13: no process outlives the run


def _wait_until_workers_served(run: subprocess.Popen[str], out: Path) -> None:
    """Until the forkserver and both workers run and a few rows are written (the workers then sit idle or busy)."""

    def ready() -> bool:
        if run.poll() is not None:
            return True
        forked = sum("multiprocessing.forkserver" in cmd for _, cmd in _session(run.pid))
        return forked >= 3 and len(_text(out / "results.csv.partial").splitlines()) >= 3

    _wait_for(ready, 120, "the decode workers to start and serve files")
    assert run.poll() is None, "the run ended before it could be stopped"


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="finds the processes of a run in /proc")
def test_kill_9_of_the_main_process_leaves_no_process_behind(tmp_path: Path, model: Path) -> None:
    scans = _pngs(tmp_path / "scans", 60)
    out = tmp_path / "out"
    run = _slow_run("predict", str(scans), "--out", str(out), "-m", str(model), "-w", "2", "-b", "2",
                    batch_seconds=0.5, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_workers_served(run, out)
        assert len(_session(run.pid)) >= 5  # main, resource tracker, forkserver, two workers
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
        # Before the fix the workers, the forkserver and the resource tracker lived on for hours.
        _wait_for(lambda: not _session(run.pid), 10, f"the run's processes to end: {_session(run.pid)}")
    finally:
        if run.poll() is None:
            run.kill()
        _kill_session(run.pid)
    with lock_output(out, "predict"):  # the kernel dropped the lock with the process
        pass


@pytest.mark.slow
@pytest.mark.skipif(not LINUX, reason="finds the processes of a run in /proc")
def test_sigterm_stops_the_run_cleanly(tmp_path: Path, model: Path) -> None:
    scans = _pngs(tmp_path / "scans", 60)
    out = tmp_path / "out"
    run = _slow_run("predict", str(scans), "--out", str(out), "-m", str(model), "-w", "2", "-b", "2",
                    batch_seconds=0.5, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_until_workers_served(run, out)
        os.kill(run.pid, signal.SIGTERM)
        _, stderr = run.communicate(timeout=60)
        _wait_for(lambda: not _session(run.pid), 10, f"the run's processes to end: {_session(run.pid)}")
    finally:
        if run.poll() is None:
            run.kill()
        _kill_session(run.pid)
    assert run.returncode == 128 + signal.SIGTERM, stderr
    [line] = _error_lines(stderr)
    assert "interrupted by SIGTERM" in line and "Traceback" not in stderr
    assert (out / "results.csv.partial").is_file() and not (out / "results.csv").exists()
    assert output_marker(out, os.listdir(out))  # the unfinished run still marks its folder (never read as input)
    with lock_output(out, "predict"):  # and the lock is free
        pass


# --------------------------------------------------------------------------- exit codes


@pytest.fixture()
def traceback_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _raise(exc: BaseException) -> Callable[..., object]:
    def fail(*args: object, **kwargs: object) -> object:
        raise exc

    return fail


def test_an_internal_error_exits_70_with_one_line_and_the_traceback_in_a_file(
        tmp_path: Path, model: Path, traceback_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predict_module, "run_predict", _raise(ValueError("boom\nsecond line")))
    args = ["predict", str(_pngs(tmp_path / "scans", 1)), "--out", str(tmp_path / "out"), "-m", str(model)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 70
    [line] = _error_lines(result.output)
    assert "a bug in cxrtriage" in line and "ValueError: boom" in line and "--verbose" in line
    assert "Traceback" not in result.output
    [saved] = traceback_dir.glob("cxrtriage-traceback-*.txt")
    assert str(saved) in line and "Traceback" in saved.read_text() and "boom" in saved.read_text()
    assert saved.stat().st_mode & 0o077 == 0  # may name patient files: this user only
    verbose = CliRunner().invoke(app, ["--verbose", *args])
    assert verbose.exit_code == 70 and "Traceback" in verbose.output


def test_ctrl_c_exits_130(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(predict_module, "run_predict", _raise(KeyboardInterrupt()))
    result = CliRunner().invoke(app, ["predict", str(_pngs(tmp_path / "scans", 1)), "--out", str(tmp_path / "out"),
                                      "-m", str(model)])
    assert result.exit_code == 130
    [line] = _error_lines(result.output)
    assert "interrupted by SIGINT" in line


@pytest.mark.parametrize(("exc", "code"), [
    (render.Interrupted(signal.SIGTERM), 143),
    (render.Interrupted(signal.SIGINT), 130),
    (InputError("x: not found"), 2),
    (CxrTriageError("an error class that forgot its exit code"), 70),
    (RuntimeError("a bug"), 70),
])
def test_main_maps_every_ending_to_a_documented_code(
        exc: BaseException, code: int, traceback_dir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(render, "install_signal_handlers", lambda: None)  # leave pytest's own handlers alone
    monkeypatch.setattr(app_module, "app", _raise(exc))
    with pytest.raises(SystemExit) as ended:
        app_module.main()
    assert ended.value.code == code
    assert len(_error_lines(capsys.readouterr().err)) == 1


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
def test_the_signal_handlers_raise_interrupted() -> None:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        render.install_signal_handlers()
        with pytest.raises(render.Interrupted) as caught:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler runs at the next bytecode boundary of the main thread
        assert caught.value.signum == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # a second signal ends the process at once
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


def test_help_documents_the_exit_codes() -> None:
    result = CliRunner().invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    for words in ("1 only with --fail-on-error", "5 output", "70 an internal error", "130 Ctrl-C", "143 SIGTERM"):
        assert words in text, words


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_a_signal_ignored_at_start_stays_ignored() -> None:
    """`nohup cxrtriage predict ...` must survive the terminal closing."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        render.install_signal_handlers()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert callable(signal.getsignal(signal.SIGTERM))
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
