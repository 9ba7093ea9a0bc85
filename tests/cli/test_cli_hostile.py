"""Issue 11 rows 1, 3, 5, 6, 7 end to end: `cxrtriage predict` in a child process, in both worker modes.

A child process, because a hard crash of a decoder (GDCM's abort) must show as a failed row and exit 0, not as a
dead test process.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import make_tiny_classifier
from hostile import EXPECTED, hostile_folder

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_predict_scores_the_good_files_and_fails_each_hostile_one(tmp_path: Path, workers: str) -> None:
    root = hostile_folder(tmp_path / "in")
    manifest = make_tiny_classifier(tmp_path / "model")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "cxrtriage", "predict", str(root), "--out", str(out), "--model", str(manifest),
           "--workers", workers]
    res = subprocess.run(cmd, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "Traceback" not in res.stderr and "panicked" not in res.stderr, res.stderr[-4000:]
    with open(out / "results.csv", newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(p.name for p in root.iterdir())  # one row per file
    for name, phrase in EXPECTED.items():
        assert rows[name]["status"] == "failed" and phrase in rows[name]["reason"], (name, rows[name]["reason"])
    assert rows["y_good.png"]["status"] == "scored" and rows["z_good_j2k.dcm"]["status"] == "scored"
