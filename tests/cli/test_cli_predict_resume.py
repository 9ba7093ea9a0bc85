"""`predict --resume`: a run killed at any point and run again scores only what is missing, and ends with the results of
an uninterrupted run; without --resume, a folder holding an earlier run gets a new run as a whole, and says so."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_tiny_classifier
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.outdir import LOCK_NAME
from cxrtriage.pipeline.journal import JOURNAL_NAME, Journal

REPO = Path(__file__).resolve().parents[2]
SLOW_CLI = Path(__file__).with_name("slow_cli.py")


@pytest.fixture()
def model(tmp_path: Path) -> Path:
    return make_tiny_classifier(tmp_path / "models" / "clf", size=16)


def _inputs(folder: Path, n: int) -> Path:
    """``n`` images, some sharing a stem (``img003.png`` and ``img003.jpg``: their heat maps need distinct names),
    and two files that are not images."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = (rng.random((40 + i % 7, 36)) * 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"img{i:03d}.{'jpg' if i % 5 == 4 else 'png'}"), img)
        if i % 9 == 3:
            cv2.imwrite(str(folder / f"img{i:03d}.jpg"), img[::-1])
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.dcm").write_bytes(b"")
    return folder


def _args(inputs: Path, out: Path, model: Path) -> list[str]:
    return ["predict", str(inputs), "--out", str(out), "--model", str(model), "--batch-size", "3", "--heatmaps",
            "--workers", "1"]


def _journaled(out: Path) -> int:
    """Inputs committed in the journal (complete lines only)."""
    try:
        lines = (out / JOURNAL_NAME).read_text().split("\n")[1:-1]
    except OSError:
        return 0
    n = 0
    for line in lines:
        try:
            n += len(json.loads(line).get("entries", []))
        except ValueError:
            pass
    return n


def _ran(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_gives_the_uninterrupted_results(tmp_path: Path, model: Path) -> None:
    inputs = _inputs(tmp_path / "in", 30)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               CXRTRIAGE_TEST_BATCH_SECONDS="0.25", COLUMNS="200")
    # The uninterrupted run, as the killed ones run (the slowed command line), timed: the kills below come at moments
    # relative to how long a whole run takes on this machine, not at fixed seconds that a faster start-up outruns.
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    subprocess.run([sys.executable, str(SLOW_CLI), *_args(inputs, reference, model)], cwd=REPO, env=env,
                   stdout=subprocess.DEVNULL, check=True, timeout=120)
    whole = time.monotonic() - t0
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    deadline = time.monotonic() + 240
    kills: list[int] = []  # inputs journaled when each kill came
    for trial in range(3):
        out = tmp_path / f"trial{trial}"
        for attempt in range(6):
            assert time.monotonic() < deadline, f"seed {seed}: out of time"
            proc = subprocess.Popen([sys.executable, str(SLOW_CLI), *_args(inputs, out, model), "--resume"], cwd=REPO,
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
            if attempt < 2:  # kill -9 at a random moment: starting, scoring, journaling, writing the tables...
                # ... the first attempt of a trial in its scoring (past the start-up), the second anywhere
                low = 0.5 if attempt == 0 else 0.05
                try:
                    proc.wait(rng.uniform(low, 0.85) * whole)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    kills.append(_journaled(out))
            try:
                _, err = proc.communicate(timeout=120)
            finally:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
            if proc.returncode == 0:
                break
            assert proc.returncode == -signal.SIGKILL, f"seed {seed}: {err.decode(errors='replace')[-2000:]}"
        else:
            pytest.fail(f"seed {seed}: trial {trial} never finished")
        assert (out / "results.csv").read_bytes() == (reference / "results.csv").read_bytes(), f"seed {seed}"
        assert (out / "worklist.csv").read_bytes() == (reference / "worklist.csv").read_bytes(), f"seed {seed}"
        assert sorted(p.name for p in (out / "heatmaps").iterdir()) == \
            sorted(p.name for p in (reference / "heatmaps").iterdir()), f"seed {seed}"
        assert not (out / LOCK_NAME).exists() and not list(out.glob("*.partial"))
        counts = json.loads((out / "run.json").read_text())["counts"]
        assert counts["files"] == 35 and counts["resumed"] <= 35
    # the kills came while runs were going on, at least one in the middle of the scoring
    assert len(kills) >= 3 and any(0 < n < 35 for n in kills), f"seed {seed}: journaled at the kills: {kills}"


def test_a_changed_input_is_scored_again_the_rest_comes_from_the_journal(tmp_path: Path, model: Path) -> None:
    inputs = _inputs(tmp_path / "in", 8)
    out = tmp_path / "out"
    first = _ran([*_args(inputs, out, model), "--resume", "--workers", "0"])
    assert "resumed" not in first
    cv2.imwrite(str(inputs / "img002.png"), np.full((50, 36), 200, np.uint8))  # new content, new size and mtime
    second = _ran([*_args(inputs, out, model), "--resume", "--workers", "0"])
    assert "│ resumed            │ 10 input(s) finished by the earlier run" in second  # 11 inputs, one changed
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 11 and [r["rows"] for r in rows if r["path"].endswith("img002.png")] == [50]
    journal = (out / JOURNAL_NAME).read_text().splitlines()
    assert sum(len(json.loads(line).get("entries", [])) for line in journal[1:]) == 12  # 11 + the new img002


def test_without_resume_an_earlier_run_is_replaced_as_a_whole_and_it_says_so(tmp_path: Path, model: Path) -> None:
    inputs = _inputs(tmp_path / "in", 6)
    out = tmp_path / "out"
    _ran([*_args(inputs, out, model), "--workers", "0"])
    stale = out / "heatmaps" / "from-an-earlier-run.png"
    stale.write_bytes(b"x")
    (out / LOCK_NAME).write_text('{"command": "predict", "pid": 123, "host": "h", "started_at": "then"}')  # killed
    res = CliRunner().invoke(app, ["predict", str(inputs / "img000.png"), "--out", str(out), "--model", str(model),
                                   "--workers", "0"])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "did not finish (predict, pid 123 on h, since then)" in said and "replaces them as a whole" in said
    assert "add --resume" in said
    assert f"warning: {out}: holds the results of an earlier run" in said and "WARNING" not in said  # one style
    assert not stale.exists()  # nothing of the earlier run is left to mix with this one
    assert len((out / "results.csv").read_text().splitlines()) == 2


def test_a_folder_of_the_inputs_is_never_taken_for_an_earlier_runs(tmp_path: Path, model: Path) -> None:
    """An input folder named like a run's artefact folder (dicom/, report/...) under --out is refused, not removed."""
    out = tmp_path / "case"
    inputs = _inputs(out / "dicom", 2)
    before = sorted(p.name for p in inputs.iterdir())
    res = CliRunner().invoke(app, ["predict", str(inputs), "--out", str(out), "--model", str(model), "--workers", "0"])
    assert res.exit_code == 4, res.output
    said = " ".join(res.output.split())
    assert f"input {inputs} is {out / 'dicom'}" in said and "choose another --out" in said
    assert sorted(p.name for p in inputs.iterdir()) == before and "img000.png" in before
    assert [p.name for p in out.iterdir()] == ["dicom"]  # nothing written: no lock file, no partial tables

    res = CliRunner().invoke(app, ["predict", str(inputs / "img000.png"), "--out", str(out), "--model", str(model),
                                   "--workers", "0"])
    assert res.exit_code == 4 and "lies in" in " ".join(res.output.split())


def test_folders_no_run_wrote_are_never_replaced(tmp_path: Path, model: Path) -> None:
    inputs = _inputs(tmp_path / "in", 1)
    out = tmp_path / "mine"
    (out / "report").mkdir(parents=True)
    (out / "report" / "radiology.html").write_text("the user's own")
    (out / "worklist.csv").write_text("accession,priority\n")
    res = CliRunner().invoke(app, ["predict", str(inputs), "--out", str(out), "--model", str(model), "--workers", "0"])
    assert res.exit_code == 4, res.output
    said = " ".join(res.output.split())
    assert "holds worklist.csv, report, which predict would replace" in said and "no cxrtriage run wrote them" in said
    assert (out / "report" / "radiology.html").read_text() == "the user's own"
    assert sorted(p.name for p in out.iterdir()) == ["report", "worklist.csv"]


def test_resume_with_other_settings_is_refused_naming_them(tmp_path: Path, model: Path) -> None:
    inputs = _inputs(tmp_path / "in", 4)
    out = tmp_path / "out"
    _ran([*_args(inputs, out, model), "--resume", "--workers", "0"])
    res = CliRunner().invoke(app, ["predict", str(inputs), "--out", str(out), "--model", str(model), "--resume",
                                   "--workers", "0"])
    assert res.exit_code == 4
    said = " ".join(res.output.split())
    assert "--heatmaps" in said and "results columns" in said and "leave out --resume" in said


def test_predict_never_replaces_the_folder_of_a_node(tmp_path: Path, model: Path) -> None:
    inputs = _inputs(tmp_path / "in", 2)
    out = tmp_path / "node"
    out.mkdir()
    Journal.create(out, "serve", {"model": "x"}).close()
    res = CliRunner().invoke(app, ["predict", str(inputs), "--out", str(out), "--model", str(model), "--workers", "0"])
    assert res.exit_code == 4 and "holds the output of `cxrtriage serve`" in " ".join(res.output.split())
    assert (out / JOURNAL_NAME).is_file() and not (out / "results.csv").exists()


def test_a_file_where_a_run_writes_a_folder_is_refused_never_removed(tmp_path: Path, model: Path) -> None:
    inputs = _inputs(tmp_path / "in", 1)
    out = tmp_path / "out"
    _ran([*_args(inputs, out, model), "--workers", "0"])
    for name in ("heatmaps", "report"):
        if (out / name).is_dir():
            for p in sorted((out / name).rglob("*"), reverse=True):
                p.rmdir() if p.is_dir() else p.unlink()
            (out / name).rmdir()
        (out / name).write_text("the user's own")
    res = CliRunner().invoke(app, [*_args(inputs, out, model), "--workers", "0", "--report"])
    assert res.exit_code == 4, res.output
    said = " ".join(res.output.split())
    assert "heatmaps, report are files or links where predict writes folders of that name" in said
    assert (out / "heatmaps").read_text() == "the user's own" == (out / "report").read_text()
