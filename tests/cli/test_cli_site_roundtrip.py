"""Issues 6 and 10 end to end on real images: predict → calibrate → predict --site → evaluate reaches the target
sensitivity, per label and for the study-level decision."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.triage import load_site

TARGET = 0.95


def _invoke(*args: object) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res.output


@pytest.mark.data
@pytest.mark.slow
def test_site_calibration_round_trip_on_kermany(shared_data: Path, tmp_path: Path) -> None:
    # A "local site": 160 real pediatric test images (every 4th, both classes), labelled 0/1 by file name.
    rows = [r for r in csv.DictReader(open(shared_data / "kermany224" / "labels.csv")) if r["split"] == "test"][::4]
    scans = tmp_path / "scans"
    scans.mkdir()
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "pneumonia", "abnormal"])
        for r in rows:
            name = r["image"].replace("/", "_")
            os.symlink(shared_data / "kermany224" / r["image"], scans / name)
            y = int(r["label"] == "PNEUMONIA")
            w.writerow([name, y, y])

    _invoke("predict", scans, "--out", tmp_path / "before", "--workers", "0")
    site = tmp_path / "site.toml"
    _invoke("calibrate", "--results", tmp_path / "before" / "results.csv", "--labels", labels, "--out", site,
            "--target-sensitivity", TARGET)
    _invoke("predict", scans, "--out", tmp_path / "after", "--workers", "0", "--site", site)
    _invoke("evaluate", "--results", tmp_path / "after" / "results.csv", "--labels", labels,
            "--json", tmp_path / "ev.json", "--n-boot", "0")

    after = list(csv.DictReader(open(tmp_path / "after" / "results.csv")))
    assert all(r["site_file"] and Path(r["site_file"]).resolve() == site.resolve() for r in after)
    assert all(r["model_score_pneumonia"] for r in after)  # the model's own scores are kept beside the site's
    report = json.loads((tmp_path / "ev.json").read_text())
    for label in ("pneumonia", "abnormal"):
        ops = {op["kind"]: op for op in report["labels_metrics"][label]["operating_points"]}
        assert ops["rule_out"]["source"] == "site"
        assert ops["rule_out"]["sensitivity"] >= TARGET, (label, ops["rule_out"])
    # Study level (issue 10): the site file holds study thresholds for the default policy's tiers, fitted for the
    # same target; they decide the priorities of the second run, and evaluate measures what the site file promised.
    fitted = load_site(site)
    assert set(fitted.study) == {"urgent", "normal"} and fitted.study["normal"].target == {"sensitivity": TARGET}
    assert all(r["priority_reason"] and "site study " in r["priority_reason"] for r in after)
    tiers = {(t["tier"], t["group"]): t for t in report["study_level"]["tiers"]}
    normal = tiers[("normal", "all studies")]
    assert normal["sensitivity"] >= TARGET
    promised = fitted.study["normal"].stats["all studies"]
    assert (normal["n_pos"], normal["n_neg"]) == (promised["n_pos"], promised["n_neg"])
    assert normal["sensitivity"] == pytest.approx(promised["sensitivity"], abs=1e-4)
    assert normal["specificity"] == pytest.approx(promised["specificity"], abs=1e-4)
    urgent = tiers[("urgent", "all studies")]
    assert urgent["specificity"] >= 1 - fitted.study["urgent"].target["max_false_urgent"]
