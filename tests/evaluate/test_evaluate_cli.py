"""`cxrtriage evaluate` and `cxrtriage calibrate` through the CLI (CliRunner), on synthetic results of a tiny model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import edit_manifest, make_tiny_classifier
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.evaluate.metrics import stats_at
from cxrtriage.model.manifest import ModelManifest, load_manifest
from cxrtriage.results import ImageRecord, ResultsWriter, Status, from_row, result_columns
from cxrtriage.triage import apply_site, load_policy, load_site, triage_record

LABELS = ("abnormal", "pneumonia", "effusion")


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> ModelManifest:
    return load_manifest(make_tiny_classifier(tmp_path_factory.mktemp("models") / "cxr-classifier", labels=LABELS))


def make_set(folder: Path, manifest: ModelManifest, *, n: int = 300, seed: int = 11) -> tuple[Path, Path, dict[str, Any]]:
    """results.csv (as predict writes it, priorities filled) and LABELS.csv with sex and view subgroups."""
    rng = np.random.default_rng(seed)
    truth = {lab: (rng.random(n) < prev).astype(int) for lab, prev in zip(LABELS, (0.5, 0.3, 0.3), strict=True)}
    policy = load_policy()
    folder.mkdir(parents=True, exist_ok=True)
    cols = result_columns(LABELS, extra=("priority_finding", "priority_score"))
    scores: dict[str, list[float]] = {lab: [] for lab in LABELS}
    with ResultsWriter(folder, cols) as w:
        for i in range(n):
            row_scores = {}
            for lab in LABELS:
                s = float(1 / (1 + np.exp(-rng.normal(-1.2 + 1.6 * truth[lab][i], 1.0))))
                row_scores[lab] = s
                scores[lab].append(s)
            record = ImageRecord(f"/scans/CASE{i:03d}.png", Status.SCORED, study_key="/scans", scores=row_scores,
                                 model_name=manifest.name, model_version=manifest.version, model_sha256=manifest.sha256)
            w.write(triage_record(record, manifest=manifest, policy=policy))
        w.write(triage_record(ImageRecord("/scans/lateral.png", Status.EXCLUDED, reason="lateral view", study_key="/scans"),
                              manifest=manifest, policy=policy))
    lines = ["image,abnormal,Pneumonia,effusion,sex,view"]
    lines += [f"case{i:03d}.png,{truth['abnormal'][i]},{truth['pneumonia'][i]},{truth['effusion'][i]},"
              f"{'FM'[i % 2]},{'PA' if i % 3 else 'AP'}" for i in range(n)]
    lines += ["lateral.png,1,1,0,F,LL", "not-in-results.png,0,0,0,M,PA"]
    labels = folder / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    return folder / "results.csv", labels, {"truth": truth, "scores": scores}


@pytest.mark.slow
def test_evaluate_cli_table_json_html_and_plots(tmp_path: Path, model: ModelManifest) -> None:
    results, labels, data = make_set(tmp_path / "run", model)
    code, out = invoke("evaluate", "--results", results, "--labels", labels, "--model", model.path.parent, "--by", "sex,view",
                       "--json", tmp_path / "ev.json", "--html", tmp_path / "ev.html", "--plots", tmp_path / "plots",
                       "--n-boot", "100")
    assert code == 0, out
    assert "Discrimination and calibration" in out and "Operating points" in out
    assert "Priority vs truth" in out and "AUROC by sex" in out
    assert "not-in-results.png" in out  # unmatched labels row reported, with its reason
    d = json.loads((tmp_path / "ev.json").read_text())
    for lab in LABELS:  # the AUROC evaluate reports is scikit-learn's on the same scores
        ref = roc_auc_score(data["truth"][lab], np.array([float(f"{s:.6g}") for s in data["scores"][lab]]))
        assert d["labels_metrics"][lab]["auroc"] == pytest.approx(ref, abs=1e-12)
        lo, hi = d["labels_metrics"][lab]["auroc_ci95"]
        assert lo < ref < hi
    assert d["matching"]["matched"] == 301 and d["matching"]["matched_scored"] == 300
    assert d["matching"]["unmatched_labels"] == [
        {"row": 303, "image": "not-in-results.png", "reason": "no results row with this file name, path or SOP Instance UID"}]
    assert d["matching"]["matched_not_scored"][0]["path"] == "/scans/lateral.png"
    assert set(d["subgroups"]) == {"sex", "view"} and set(d["subgroups"]["view"]) == {"AP", "PA"}
    assert d["priority"]["counts"]["not_assessed"]["urgent finding"] == 1
    html = (tmp_path / "ev.html").read_text()
    assert html.count("data:image/png;base64,") == len(LABELS) + 1
    assert "http://" not in html and "https://" not in html  # self-contained
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "roc_all.png", "roc_reliability_abnormal.png", "roc_reliability_effusion.png", "roc_reliability_pneumonia.png"]


def test_a_missing_labels_file_is_one_error_line_and_nothing_else(tmp_path: Path, model: ModelManifest,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # was: a six-line WARNING about the packaged policy's labels (pneumothorax, edema) came first
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(model.path.parent.parent))
    results, _, _ = make_set(tmp_path / "run", model, n=20)
    code, out = invoke("evaluate", "--results", results, "--labels", tmp_path / "nolabels.csv")
    assert code == 2 and out.strip().splitlines() == [
        f"error: {tmp_path / 'nolabels.csv'}: labels file not found; pass --labels with the LABELS.csv of the scored "
        "images"], out


def test_the_packaged_policy_gives_no_warning_about_labels_the_model_lacks(tmp_path: Path,
                                                                          model: ModelManifest) -> None:
    results, labels, _ = make_set(tmp_path / "run", model, n=40)
    code, out = invoke("evaluate", "--results", results, "--labels", labels, "--model", model.path.parent,
                       "--n-boot", "0")
    assert code == 0, out
    assert "WARNING" not in out and "not among the model's labels" not in out
    # what matters for safety is said once, in one line
    assert out.count("warning: no critical finding of policy 'default' (pneumothorax) is a label of model") == 1


def test_evaluate_refuses_results_of_another_model(tmp_path: Path, model: ModelManifest) -> None:
    results, labels, _ = make_set(tmp_path / "run", model, n=30)
    other = make_tiny_classifier(tmp_path / "other", labels=LABELS, seed=5)
    code, out = invoke("evaluate", "--results", results, "--labels", labels, "--model", other.parent)
    assert code == 4 and "pass --model pointing at the model that produced these results" in out


def test_calibrate_then_predict_with_site_then_evaluate(tmp_path: Path, model: ModelManifest) -> None:
    results, labels, data = make_set(tmp_path / "local", model, n=400, seed=12)
    site_path = tmp_path / "site.toml"
    code, out = invoke("calibrate", "--results", results, "--labels", labels, "--out", site_path,
                       "--target-sensitivity", "0.9", "--method", "isotonic")
    assert code == 0, out
    assert "Site calibration (isotonic, target sensitivity 0.90)" in out
    site = load_site(site_path, manifest=model)
    assert set(site.labels) == set(LABELS)
    # The site thresholds reach the target on the calibration set, through apply_site as predict --site applies it.
    for lab in LABELS:
        model_scores = [float(f"{s:.6g}") for s in data["scores"][lab]]
        site_scores = np.array([apply_site({lab: s}, site)[lab] for s in model_scores])
        assert stats_at(data["truth"][lab], site_scores, site.labels[lab].rule_out).sensitivity >= 0.9

    # Overwriting needs --force.
    code, out = invoke("calibrate", "--results", results, "--labels", labels, "--out", site_path)
    assert code == 4 and "--force" in out

    # Re-score "with --site": site scores, site thresholds, site_file recorded; evaluate picks the site file up.
    policy = load_policy()
    with open(results, newline="") as f:
        rows = list(csv.DictReader(f))
    site_rows = []
    for r in rows:
        record = from_row(r)
        if record.scored:
            s = apply_site({lab: float(r[f"score_{lab}"]) for lab in LABELS}, site)
            record = triage_record(record.replace(scores=s, site_file=str(site_path)), manifest=model, policy=policy,
                                   site=site)
        site_rows.append(record)
    with ResultsWriter(tmp_path / "scored", list(rows[0])) as w:
        for record in site_rows:
            w.write(record)
    code, out = invoke("evaluate", "--results", tmp_path / "scored" / "results.csv", "--labels", labels,
                       "--model", model.path.parent, "--json", tmp_path / "ev.json", "--n-boot", "0")
    assert code == 0, out
    d = json.loads((tmp_path / "ev.json").read_text())
    assert d["site_file"] == str(site_path.resolve())
    for lab in LABELS:
        ops = {op["kind"]: op for op in d["labels_metrics"][lab]["operating_points"]}
        assert ops["rule_out"]["source"] == "site" and ops["rule_out"]["sensitivity"] >= 0.9
    assert "(site balanced)" in " ".join(r.priority_reason or "" for r in site_rows)

    # Calibrating on results that already went through a site file is refused.
    code, out = invoke("calibrate", "--results", tmp_path / "scored" / "results.csv", "--labels", labels,
                       "--out", tmp_path / "again.toml")
    assert code == 4 and "WITHOUT --site" in out
    # A site file that has gone missing is an error, not a silent switch to the model's thresholds.
    site_path.rename(tmp_path / "moved.toml")
    code, out = invoke("evaluate", "--results", tmp_path / "scored" / "results.csv", "--labels", labels,
                       "--model", model.path.parent)
    assert code == 4 and "pass --site PATH" in out


def test_calibrate_warns_on_a_small_local_set(tmp_path: Path, model: ModelManifest) -> None:
    results, labels, _ = make_set(tmp_path / "small", model, n=40, seed=13)
    code, out = invoke("calibrate", "--results", results, "--labels", labels, "--out", tmp_path / "site.toml")
    assert code == 0, out
    assert "positives; with fewer than 20" in out and "95% CI on sensitivity" in out


def test_calibrate_refuses_a_site_file_for_another_model(tmp_path: Path, model: ModelManifest) -> None:
    results, labels, _ = make_set(tmp_path / "run", model, n=200, seed=14)
    code, out = invoke("calibrate", "--results", results, "--labels", labels, "--out", tmp_path / "site.toml")
    assert code == 0, out
    newer = load_manifest(make_tiny_classifier(tmp_path / "v2", labels=LABELS, seed=9))
    from cxrtriage.errors import ConfigError

    with pytest.raises(ConfigError, match="made for model 'tiny-classifier' version 0.0.1-test"):
        load_site(tmp_path / "site.toml", manifest=newer)
    code, out = invoke("calibrate", "--results", results, "--labels", labels, "--out", tmp_path / "s2.toml",
                       "--model", newer.path.parent)
    assert code == 4 and "pass --model pointing at the model that produced these results" in out  # another ONNX file
    # The same ONNX file under another version: the site file would record a version predict then refuses.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    data = json.loads(model.path.read_text())
    data["version"] = "9.9.9"
    shutil.copy(model.onnx_file, renamed / "model.onnx")  # a manifest names files inside its own folder only
    data["onnx_file"] = "model.onnx"
    edit_manifest(renamed / "manifest.json", data)
    code, out = invoke("calibrate", "--results", results, "--labels", labels, "--out", tmp_path / "s3.toml",
                       "--model", renamed)
    assert code == 4 and "not from --model 'tiny-classifier' 9.9.9" in out, out


def test_evaluate_top_sets_the_rows_of_the_worst_misses_table(tmp_path: Path, model: ModelManifest) -> None:
    """--top N lists up to N missed cases per label and kind in the terminal too (it showed at most 2)."""
    results, labels, data = make_set(tmp_path / "run", model, n=300)
    rule_out = model.thresholds["abnormal"].rule_out.threshold
    missed = sum(1 for y, s in zip(data["truth"]["abnormal"], data["scores"]["abnormal"], strict=True)
                 if y == 1 and s < rule_out)
    assert missed >= 6  # enough misses for --top to matter

    def rows(top: int) -> int:
        code, out = invoke("evaluate", "--results", results, "--labels", labels, "--model", model.path.parent,
                           "--n-boot", "0", "--top", str(top))
        assert code == 0, out
        assert f"Worst misses (--top {top} per label and kind)" in " ".join(out.split())
        return sum(1 for line in out.splitlines() if "abnormal" in line and "missed positive" in line)

    assert rows(6) == 6 and rows(3) == 3 and rows(1) == 1


def test_evaluate_and_calibrate_take_the_results_folder_too(tmp_path: Path, model: ModelManifest) -> None:
    """`evaluate --results OUT` said 'results file not found' of a folder that holds results.csv (monitor takes it)."""
    results, labels, _ = make_set(tmp_path / "run", model, n=60)
    code, by_file = invoke("evaluate", "--results", results, "--labels", labels, "--model", model.path.parent)
    assert code == 0, by_file
    code, by_folder = invoke("evaluate", "--results", results.parent, "--labels", labels, "--model", model.path.parent)
    assert code == 0 and by_folder == by_file, by_folder
    code, out = invoke("calibrate", "--results", results.parent, "--labels", labels, "--out", tmp_path / "site.toml",
                       "--model", model.path.parent)
    assert code == 0 and (tmp_path / "site.toml").is_file(), out
    (tmp_path / "empty").mkdir()
    code, out = invoke("evaluate", "--results", tmp_path / "empty", "--labels", labels)
    assert code == 2 and "neither results.jsonl nor results.csv found" in out, out
