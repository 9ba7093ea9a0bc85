"""Inputs that are not plain image files, and outputs inside the inputs: every input path gets exactly one row,
nothing hangs, and no output of a run is ever read back as an input (issue 11, rows 15 and 16)."""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_tiny_classifier, make_tiny_segmenter, write_dicom
from typer.testing import CliRunner

from cxrtriage.cli.app import app

REPO = Path(__file__).resolve().parents[2]
posix_only = pytest.mark.skipif(os.name != "posix", reason="links, FIFOs and sockets as POSIX has them")


@pytest.fixture()
def models(tmp_path: Path) -> tuple[Path, Path]:
    return (make_tiny_classifier(tmp_path / "models" / "clf"), make_tiny_segmenter(tmp_path / "models" / "seg"))


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), (np.random.default_rng(seed).random((40, 32)) * 255).astype(np.uint8))
    return path


def _rows(out: Path, name: str = "results.csv") -> list[dict[str, str]]:
    with open(out / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _flat(output: str) -> str:
    """The output with the log's line wrapping undone (words only)."""
    return " ".join(output.split())


def _bounded(fn: Callable[[], tuple[int, str]], fifos: list[Path], seconds: float = 120) -> tuple[int, str]:
    """``fn()``, failing (instead of hanging the suite) when it blocks on one of ``fifos``."""
    box: list[tuple[int, str]] = []
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        for fifo in fifos:  # a reader blocked in open() is released by a writer that opens and closes
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        worker.join(10)
        pytest.fail(f"the run hung (blocked on a FIFO among {fifos}?)")
    return box[0]


# --------------------------------------------------------------------------- row 16


def _odd_folder(root: Path) -> tuple[dict[str, tuple[str, str]], list[Path]]:
    """A folder with every kind of entry; returns {name: (status, words in the reason)} and the FIFOs."""
    _png(root / "good.png", 1)
    _png(root / "real" / "inner.png", 2)
    (root / "a").symlink_to("b")  # ln -s a b; ln -s b a
    (root / "b").symlink_to("a")
    (root / "dangling.png").symlink_to("nowhere.png")
    (root / "link_to_file.png").symlink_to(root / "good.png")  # links to files keep working: the same file, one row
    (root / "link_to_folder").symlink_to(root / "real")
    (root / "loop_folder").symlink_to(root)
    (root / "device.dcm").symlink_to("/dev/zero")  # would never end if read
    os.mkfifo(root / "x.png")  # mkfifo x.png: would block if opened
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "socket"))
    sock.close()
    expected = {
        "good.png": ("scored", ""),
        "inner.png": ("scored", ""),
        "a": ("failed", "link loop"),
        "b": ("failed", "link loop"),
        "dangling.png": ("failed", "dangling link"),
        "link_to_folder": ("excluded", "links to folders are not followed"),
        "loop_folder": ("excluded", "links to folders are not followed"),
        "device.dcm": ("excluded", "character device"),
        "x.png": ("excluded", "FIFO"),
        "socket": ("excluded", "socket"),
    }
    return expected, [root / "x.png"]


def _check_rows(rows: list[dict[str, str]], expected: dict[str, tuple[str, str]]) -> None:
    by_name = {Path(r["path"]).name: r for r in rows}
    assert len(by_name) == len(rows), "a path got two rows"
    assert set(by_name) == set(expected)  # link_to_file.png is good.png: the file got its one row
    for name, (status, words) in expected.items():
        assert by_name[name]["status"] == status, (name, by_name[name]["reason"])
        assert words in by_name[name]["reason"], (name, by_name[name]["reason"])


@posix_only
def test_links_fifos_sockets_and_devices_get_one_row_each(tmp_path: Path, models: tuple[Path, Path]) -> None:
    expected, fifos = _odd_folder(tmp_path / "d")
    out = tmp_path / "out"
    code, output = _bounded(lambda: _invoke("predict", str(tmp_path / "d"), "--out", str(out), "-m", str(models[0]),
                                            "-w", "0"), fifos)
    assert code == 0, output
    _check_rows(_rows(out), expected)
    # explain gives the same entries a row each too (and does not hang either)
    code, output = _bounded(lambda: _invoke("explain", str(tmp_path / "d"), "--out", str(tmp_path / "exp"), "--model",
                                            str(models[0]), "--flagged"), fifos)
    assert code == 0, output
    explained = {Path(r["path"]).name: r["status"] for r in _rows(tmp_path / "exp", "explain.csv")}
    assert set(explained) == set(expected)
    # with predict's own status: explain applies the same selection rules (excluded) and the same reads (failed)
    assert {n: explained[n] for n in expected if expected[n][0] != "scored"} == {
        n: status for n, (status, _) in expected.items() if status != "scored"}


@pytest.mark.slow
@posix_only
def test_odd_entries_with_decode_workers(tmp_path: Path, models: tuple[Path, Path]) -> None:
    expected, _ = _odd_folder(tmp_path / "d")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "cxrtriage", "predict", str(tmp_path / "d"), "--out", str(out), "-m",
                          str(models[0]), "-w", "2"], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stderr
    _check_rows(_rows(out), expected)


@posix_only
def test_a_fifo_named_as_input_gets_a_row(tmp_path: Path, models: tuple[Path, Path]) -> None:
    os.mkfifo(tmp_path / "x.png")
    code, output = _bounded(lambda: _invoke("predict", str(tmp_path / "x.png"), "--out", str(tmp_path / "out"), "-m",
                                            str(models[0]), "-w", "0"), [tmp_path / "x.png"])
    assert code == 0, output
    [row] = _rows(tmp_path / "out")
    assert row["status"] == "excluded" and "FIFO" in row["reason"]


# --------------------------------------------------------------------------- row 15


def test_out_inside_the_input_folder_is_never_read_as_input(tmp_path: Path, models: tuple[Path, Path]) -> None:
    d = tmp_path / "d"
    for i in range(3):
        _png(d / f"scan{i}.png", i)
    write_dicom(d / "study" / "pa.dcm", rows=48, cols=40)
    clf, seg = (str(m) for m in models)
    args = ["predict", str(d), "--out", str(d / "out"), "-m", clf, "--segmenter", seg, "--lungs", "--heatmaps",
            "--heatmap-method", "gradcam", "-w", "0"]
    code, output = _invoke(*args)
    assert code == 0, output
    first = _rows(d / "out")
    assert len(list((d / "out" / "masks").glob("*.png"))) == 4  # outputs a second run could mistake for inputs
    code, output = _invoke(*args)  # predict d --out d/out --lungs --heatmaps, twice
    assert code == 0, output
    second = _rows(d / "out")
    assert len(second) == len(first) == 4
    assert [r["path"] for r in second] == [r["path"] for r in first]
    assert "this run's output folder" in _flat(output)
    # another --out: the folder of the earlier run, inside the input folder, is skipped and named once
    code, output = _invoke("predict", str(d), "--out", str(tmp_path / "elsewhere"), "-m", clf, "-w", "0")
    assert code == 0, output
    assert len(_rows(tmp_path / "elsewhere")) == 4
    assert _flat(output).count("not read as input") == 1 and "run.json of a cxrtriage run" in _flat(output)
    # explain and segment skip it too
    code, output = _invoke("explain", str(d), "--out", str(d / "exp"), "--model", clf, "--flagged")
    assert code == 0, output
    code, output = _invoke("explain", str(d), "--out", str(d / "exp"), "--model", clf, "--flagged")
    assert code == 0, output
    assert {Path(r["path"]).parent.name for r in _rows(d / "exp", "explain.csv")} == {"d", "study"}
    code, output = _invoke("segment", str(d), "--out", str(d / "seg"), "-m", seg, "-w", "0")
    assert code == 0 and len(_rows(d / "seg", "segment.csv")) == 4, output


def test_out_equal_to_an_input_folder_is_refused(tmp_path: Path, models: tuple[Path, Path]) -> None:
    _png(tmp_path / "d" / "scan.png", 0)
    code, output = _invoke("predict", str(tmp_path / "d"), "--out", str(tmp_path / "d"), "-m", str(models[0]))
    assert code == 4 and "also an INPUT folder" in output
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["scan.png"]  # nothing written, not even the lock


def test_the_summary_names_the_first_failed_inputs_and_where_the_rest_are(tmp_path: Path,
                                                                          models: tuple[Path, Path]) -> None:
    """'failed 5' alone sent a new user to the results table to find which files and why."""
    d = tmp_path / "d"
    _png(d / "a.png", 0)
    for i in range(5):
        (d / f"bad{i}.dcm").write_text(f"an error page {i}")
    out = tmp_path / "out"
    code, output = _invoke("predict", str(d), "--out", str(out), "-m", str(models[0]), "-w", "0")
    assert code == 0, output
    said = re.sub(r"[\s│]+", "", output)  # a long path folds across the table's lines
    reasons = {Path(r["path"]).name: r["reason"] for r in _rows(out) if r["status"] == "failed"}
    assert len(reasons) == 5
    named = [n for n in sorted(reasons) if f"{d / n}:notanimagefile" in said]
    assert len(named) == 3  # the first three, each with its reason; the rest are counted
    assert "and2more:the'reason'columnofresults.csv" in said
    code, output = _invoke("segment", str(d / "bad0.dcm"), str(d / "a.png"), "--out", str(tmp_path / "seg"), "-m",
                           str(models[1]), "-w", "0")
    assert code == 0, output
    said = re.sub(r"[\s│]+", "", output)  # a long path folds across the table's lines
    assert f"{d / 'bad0.dcm'}:notanimagefile" in said and "(alsointhe'reason'columnofsegment.csv)" in said
