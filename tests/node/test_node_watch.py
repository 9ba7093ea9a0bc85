"""`cxrtriage watch`: files dropped into a folder are scored once they are complete, each exactly once across restarts."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_tiny_classifier
from nodekit import Proc, results_rows, start, wait_for, worklist_rows

from cxrtriage.node.watch import StableFiles, in_progress
from cxrtriage.pipeline.journal import FileIdentity

pytestmark = pytest.mark.slow


def _png(path: Path, h: int, w: int, seed: int) -> bytes:
    img = (np.random.default_rng(seed).random((h, w)) * 255).astype(np.uint8)
    ok, buf = cv2.imencode(".png", img)
    assert ok
    return buf.tobytes()


def _start_watch(folder: Path, out: Path, model: Path, log: str) -> Proc:
    return start(["--verbose", "watch", str(folder), "--out", str(out), "--model", str(model), "--poll", "0.2",
                  "--settle", "1", "--workers", "0"], out.parent / log)


def test_dropped_files_are_scored_once_complete_and_exactly_once_across_restarts(tmp_path: Path) -> None:
    model = make_tiny_classifier(tmp_path / "models" / "clf", size=16)
    folder, out = tmp_path / "hot", tmp_path / "out"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(folder / "a.png", 40, 30, 1))
    proc = _start_watch(folder, out, model, "watch1.log")
    try:
        wait_for(lambda: len(results_rows(out)) == 1, 60, "a.png scored", proc)
        # the *.part convention: never read while it has that name, read once renamed
        part = folder / "b.png.part"
        part.write_bytes(_png(part, 50, 40, 2)[:100])  # an incomplete PNG under its temporary name
        time.sleep(2)
        assert len(results_rows(out)) == 1
        part.write_bytes(_png(part, 50, 40, 2))
        os.rename(part, folder / "b.png")
        # a slow writer: the file grows for 3 s (longer than --settle), and is read only when it stopped changing
        data = _png(folder / "c.png", 60, 50, 3)
        chunks = [data[i:i + len(data) // 10 + 1] for i in range(0, len(data), len(data) // 10 + 1)]

        def write_slowly() -> None:
            with open(folder / "c.png", "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    f.flush()
                    time.sleep(0.3)

        writer = threading.Thread(target=write_slowly)
        writer.start()
        writer.join(30)
        wait_for(lambda: len(results_rows(out)) == 3, 60, "b.png and c.png scored", proc)
        rows = {Path(r["path"]).name: r for r in results_rows(out)}
        assert rows["b.png"]["status"] == rows["c.png"]["status"] == "scored"
        assert (rows["b.png"]["rows"], rows["c.png"]["rows"]) == ("50", "60")  # read whole, never half-written
        proc.kill9()
    finally:
        proc.stop()

    (folder / "d.png").write_bytes(_png(folder / "d.png", 30, 30, 4))
    (folder / "a.png").write_bytes(_png(folder / "a.png", 70, 30, 5))  # changed: scored again, its row replaced
    again = _start_watch(folder, out, model, "watch2.log")
    try:
        wait_for(lambda: {Path(r["path"]).name: r["rows"] for r in results_rows(out)}.get("a.png") == "70"
                 and len(results_rows(out)) == 4, 60, "d.png and the new a.png scored", again)
        time.sleep(1.5)
        rows = results_rows(out)
        assert Counter(Path(r["path"]).name for r in rows) == Counter(["a.png", "b.png", "c.png", "d.png"])
        assert sum(int(w["n_images"]) for w in worklist_rows(out)) == 4
        log = again.text()
        assert "batch 4: 2 file(s)" in log or ("batch 4: 1 file(s)" in log and "batch 5: 1 file(s)" in log)
    finally:
        again.stop()


def test_stable_files_and_the_part_convention() -> None:
    stable = StableFiles(settle=1.0)
    a, b = FileIdentity(10, 1), FileIdentity(20, 2)
    assert not stable.ready("x", a, 0.0)
    assert not stable.ready("x", a, 0.5)
    assert stable.ready("x", a, 1.0)
    assert not stable.ready("x", b, 1.1)  # it changed: the clock starts again
    assert stable.ready("x", b, 2.2)
    assert StableFiles(settle=0).ready("y", a, 0.0)
    assert in_progress("scan.dcm.part") and in_progress("X.PARTIAL") and in_progress("a.tmp")
    assert not in_progress("scan.dcm") and not in_progress("partial.dcm")


@pytest.mark.parametrize("command", ["serve", "watch"])
def test_serve_and_watch_take_predicts_heat_map_options(tmp_path: Path, command: str) -> None:
    from typer.testing import CliRunner

    from cxrtriage.cli.app import app

    where = ["--aet", "CXR", "--port", "0"] if command == "serve" else [str(tmp_path)]
    result = CliRunner().invoke(app, [command, *where, "--out", str(tmp_path / "out"), "--heatmap-gate"])
    # the option exists and is checked like predict's: gating needs heat maps
    assert result.exit_code == 4 and "--heatmap-gate" in result.output and "needs --heatmaps" in result.output
