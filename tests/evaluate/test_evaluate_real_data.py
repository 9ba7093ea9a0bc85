"""Calibrate and evaluate on real NIH ChestX-ray14 images and labels (../shared/data), scored through predict.

Uses the trained ``models/cxr-classifier`` when it is installed, else a tiny random-weight model: the
point here is the plumbing on real files and labels (matching, site thresholds reaching the target,
AUROC equal to scikit-learn's), not the model's accuracy.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from factories import make_tiny_classifier
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.evaluate.metrics import stats_at
from cxrtriage.model import load_classifier
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict
from cxrtriage.triage import apply_site, load_site, normalize_label

N_IMAGES = 160
TARGET = 0.9


@pytest.mark.data
@pytest.mark.slow
def test_calibrate_and_evaluate_on_nih14(shared_data: Path, repo_root: Path, tmp_path: Path) -> None:
    nih = shared_data / "nih14"
    trained = repo_root / "models" / "cxr-classifier" / "manifest.json"
    model_path = trained.parent if trained.is_file() else make_tiny_classifier(tmp_path / "tiny").parent
    model = load_classifier(model_path, device="cpu")

    with open(nih / "labels.csv", newline="") as f:
        nih_rows = sorted(csv.DictReader(f), key=lambda r: r["image"])[:N_IMAGES]
    run_predict(PredictConfig(inputs=tuple(nih / r["image"] for r in nih_rows), out_dir=tmp_path / "run", workers=0,
                              batch_size=16), model=model)
    results = tmp_path / "run" / "results.csv"

    # LABELS.csv for the model's labels: NIH columns by name; "abnormal" is the complement of no_finding.
    nih_cols = {normalize_label(c): c for c in nih_rows[0]}
    columns = {lab: nih_cols[normalize_label(lab)] for lab in model.labels if normalize_label(lab) in nih_cols}
    if "abnormal" in model.labels:
        columns["abnormal"] = "no_finding"
    assert columns, f"no NIH label matches the model's labels {model.labels}"
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *columns, "sex", "view", "age"])
        for r in nih_rows:
            truth = [1 - int(r[c]) if lab == "abnormal" else int(r[c]) for lab, c in columns.items()]
            w.writerow([r["image"], *truth, r["sex"], r["view"], r["age"]])

    runner = CliRunner()
    site_path = tmp_path / "site.toml"
    res = runner.invoke(app, ["calibrate", "--results", str(results), "--labels", str(labels), "--out", str(site_path),
                              "--target-sensitivity", str(TARGET)])
    assert res.exit_code == 0, res.output
    site = load_site(site_path, manifest=model.manifest)

    with open(results, newline="") as f:
        scored = {Path(r["path"]).name: r for r in csv.DictReader(f) if r["status"] == "scored"}
    assert len(scored) == N_IMAGES  # every NIH PNG is a frontal CXR the pipeline scores
    truth = {lab: np.array([1 - int(r[c]) if lab == "abnormal" else int(r[c]) for r in nih_rows]) for lab, c in columns.items()}
    names = [Path(r["image"]).name for r in nih_rows]
    for lab in columns:
        s = np.array([float(scored[n][f"score_{lab}"]) for n in names])
        if lab in site.labels:
            site_scores = np.array([apply_site({lab: v}, site)[lab] for v in s])
            assert stats_at(truth[lab], site_scores, site.labels[lab].rule_out).sensitivity >= TARGET, lab
        else:  # skipped labels say why (one class only, or scores that do not rise with the labels)
            assert f"{lab}:" in res.output
    assert site.labels or "do not rise" in res.output

    out_json = tmp_path / "ev.json"
    res = runner.invoke(app, ["evaluate", "--results", str(results), "--labels", str(labels), "--model", str(model_path),
                              "--by", "sex,view,age", "--json", str(out_json), "--html", str(tmp_path / "ev.html"),
                              "--n-boot", "100"])
    assert res.exit_code == 0, res.output
    d = json.loads(out_json.read_text())
    assert d["matching"]["matched"] == N_IMAGES and d["matching"]["matched_by"] == {"path": N_IMAGES}
    for lab in columns:
        s = np.array([float(scored[n][f"score_{lab}"]) for n in names])
        if 0 < truth[lab].sum() < N_IMAGES:
            assert d["labels_metrics"][lab]["auroc"] == pytest.approx(roc_auc_score(truth[lab], s), abs=1e-12)
    assert set(d["subgroups"]["view"]) <= {"PA", "AP"}
    assert len(d["subgroups"]["age"]) == 4
