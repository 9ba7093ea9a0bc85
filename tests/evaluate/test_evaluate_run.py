"""`run_evaluate` and `calibrate_results` called directly, on synthetic results of a tiny model."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from factories import make_tiny_classifier

from cxrtriage.errors import ConfigError, InputError
from cxrtriage.evaluate.calibrate import CalibrationRun, calibrate_results, results_identity
from cxrtriage.evaluate.run import EvaluateConfig, plot_name, run_evaluate
from cxrtriage.evaluate.runner import evaluation_to_dict
from cxrtriage.model.manifest import ModelManifest, load_manifest
from cxrtriage.results import ResultsTable, ResultsWriter, from_row, result_columns, to_row
from cxrtriage.triage import load_policy, load_site, triage_record

LABELS = ("abnormal", "pneumonia", "effusion")


@pytest.fixture()
def model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelManifest:
    # Installed under its own name, so results that name it resolve without --model.
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(tmp_path / "models"))
    return load_manifest(make_tiny_classifier(tmp_path / "models" / "tiny-classifier", labels=LABELS))


def make_set(folder: Path, manifest: ModelManifest, *, n: int = 160, seed: int = 4,
             edit: dict[int, dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """results.csv as predict writes it (``edit`` overrides fields of some rows) and LABELS.csv."""
    rng = np.random.default_rng(seed)
    truth = {lab: (rng.random(n) < 0.4).astype(int) for lab in LABELS}
    policy = load_policy()
    with ResultsWriter(folder, result_columns(LABELS, extra=("priority_finding", "priority_score"))) as w:
        for i in range(n):
            row: dict[str, Any] = {"path": f"/scans/c{i:03d}.png", "status": "scored", "study_key": "/scans",
                                   "model_name": manifest.name, "model_version": manifest.version,
                                   "model_sha256": manifest.sha256}
            row |= {f"score_{lab}": float(1 / (1 + np.exp(-rng.normal(-1 + 2 * truth[lab][i], 1.0)))) for lab in LABELS}
            triaged = to_row(triage_record(from_row(row), manifest=manifest, policy=policy), w.columns)
            w.write(from_row(triaged | (edit or {}).get(i, {})))
    labels = folder / "labels.csv"
    lines = ["image,abnormal,pneumonia,effusion,sex"]
    lines += [f"c{i:03d}.png,{truth['abnormal'][i]},{truth['pneumonia'][i]},{truth['effusion'][i]},{'FM'[i % 2]}"
              for i in range(n)]
    labels.write_text("\n".join(lines + ["unknown.png,1,1,1,F"]) + "\n")
    return folder / "results.csv", labels


def _partials(folder: Path) -> list[Path]:
    return list(folder.rglob("*.partial"))


def test_run_evaluate_writes_json_html_and_plots(tmp_path: Path, model: ModelManifest) -> None:
    results, labels = make_set(tmp_path / "run", model)
    out = tmp_path / "out"
    run = run_evaluate(EvaluateConfig(results=results, labels=labels, by=("sex",), json_out=out / "ev.json",
                                      html_out=out / "html" / "ev.html", plots=out / "plots", n_boot=0))
    ev = run.evaluation
    assert ev.model["name"] == "tiny-classifier" and ev.n_matched_scored == 160 and set(ev.subgroups) == {"sex"}
    assert json.loads((out / "ev.json").read_text()) == json.loads(json.dumps(evaluation_to_dict(ev)))
    assert "<html" in (out / "html" / "ev.html").read_text().lower()
    assert sorted(p.name for p in run.plot_files) == sorted(["roc_all.png", *(plot_name(lab) for lab in LABELS)])
    assert sorted(p.name for p in (out / "plots").iterdir()) == sorted(p.name for p in run.plot_files)
    assert (run.json_path, run.html_path, run.plots_dir) == (out / "ev.json", out / "html" / "ev.html", out / "plots")
    assert not _partials(tmp_path)


def test_run_evaluate_writes_only_what_is_asked(tmp_path: Path, model: ModelManifest) -> None:
    results, labels = make_set(tmp_path / "run", model, n=60)
    run = run_evaluate(EvaluateConfig(results=results, labels=labels, n_boot=0))
    assert (run.json_path, run.html_path, run.plots_dir, run.plot_files) == (None, None, None, ())
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["labels.csv", "results.csv", "results.jsonl"]


def test_run_evaluate_refusals(tmp_path: Path, model: ModelManifest) -> None:
    results, labels = make_set(tmp_path / "mixed", model, n=40, edit={3: {"model_name": "another-model"}})
    with pytest.raises(ConfigError, match="results come from several models"):
        run_evaluate(EvaluateConfig(results=results, labels=labels, n_boot=0))
    results, labels = make_set(tmp_path / "ok", model, n=40)
    (tmp_path / "nolabels.csv").write_text("image,fracture\nc000.png,1\n")
    with pytest.raises(InputError, match="no column is named like a label of model 'tiny-classifier'"):
        run_evaluate(EvaluateConfig(results=results, labels=tmp_path / "nolabels.csv", n_boot=0))
    with pytest.raises(ConfigError, match="scored without a site file"):
        run_evaluate(EvaluateConfig(results=results, labels=labels, site=tmp_path / "site.toml", n_boot=0))


def test_run_evaluate_with_a_manifest_given_in_memory(tmp_path: Path, model: ModelManifest) -> None:
    """`models validate` evaluates at operating points it has not written yet: the manifest it passes is used (same
    ONNX file), one of another ONNX file is refused."""
    import dataclasses

    from cxrtriage.model.manifest import LabelThresholds, OperatingPoint

    results, labels = make_set(tmp_path / "run", model)
    moved = dataclasses.replace(model, version="9.9.9", thresholds={
        **model.thresholds, "effusion": LabelThresholds(OperatingPoint(0.123), OperatingPoint(0.456))})
    ev = run_evaluate(EvaluateConfig(results=results, labels=labels, n_boot=0), manifest=moved).evaluation
    assert [op.threshold for op in ev.labels["effusion"].operating_points] == [0.123, 0.456]
    assert ev.labels["pneumonia"].operating_points[0].threshold == model.thresholds["pneumonia"].rule_out.threshold
    assert ev.model["version"] == "9.9.9"
    other = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(ConfigError, match="not the model that produced the results"):
        run_evaluate(EvaluateConfig(results=results, labels=labels, n_boot=0), manifest=other)


def test_missing_inputs_are_refused_before_the_model_site_and_policy_are_loaded(
        tmp_path: Path, model: ModelManifest, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    results, labels = make_set(tmp_path / "ok", model, n=20)
    from cxrtriage.evaluate import run as run_module

    def not_yet(*args: object, **kwargs: object) -> None:
        raise AssertionError("loaded before the inputs were checked")

    monkeypatch.setattr(run_module, "manifest_for_results", not_yet)
    with caplog.at_level(logging.INFO), pytest.raises(InputError, match="nolabels.csv: labels file not found; pass "
                                                                        "--labels"):
        run_evaluate(EvaluateConfig(results=results, labels=tmp_path / "nolabels.csv", n_boot=0))
    with pytest.raises(InputError, match="is a folder, not a CSV file"):
        run_evaluate(EvaluateConfig(results=results, labels=tmp_path, n_boot=0))
    with pytest.raises(ConfigError, match="nopolicy.toml: policy file not found"):
        run_evaluate(EvaluateConfig(results=results, labels=labels, policy=tmp_path / "nopolicy.toml", n_boot=0))
    assert not caplog.records  # nothing said before the one error


def test_a_policy_level_no_label_reaches_is_one_warning(tmp_path: Path, model: ModelManifest) -> None:
    results, labels = make_set(tmp_path / "run", model, n=40)
    ev = run_evaluate(EvaluateConfig(results=results, labels=labels, n_boot=0)).evaluation
    # the packaged policy's critical finding (pneumothorax) is no label of the tiny model; its urgent ones are
    assert [w for w in ev.warnings if "policy 'default'" in w] == [
        "no critical finding of policy 'default' (pneumothorax) is a label of model 'tiny-classifier': no image can "
        "be critical under this policy, so every critical finding in the labels counts as missed"]
    assert ev.warnings[0].startswith("no critical finding")  # first: it bears on every triage figure below


def test_calibrate_results_fits_and_writes_the_site_file(tmp_path: Path, model: ModelManifest) -> None:
    results, labels = make_set(tmp_path / "run", model, n=300)
    run = calibrate_results(results, labels, out=tmp_path / "site" / "site.toml", target_sensitivity=0.9)
    assert isinstance(run, CalibrationRun)
    assert run.path == tmp_path / "site" / "site.toml" and not _partials(tmp_path)
    assert run.n_used == 300 and [why for _, why in run.unmatched_labels] == [
        "no results row with this file name, path or SOP Instance UID"]
    assert [f.label for f in run.fits] == list(LABELS) and set(run.site.labels) == set(LABELS)
    back = load_site(run.path, manifest=model)  # made for exactly this model
    assert back.labels == run.site.labels and back.source["matched_scored"] == 300
    # An explicit --model must be the model that produced the results.
    assert calibrate_results(results, labels, out=run.path, model=model.path.parent, force=True).path == run.path


def test_calibrate_results_refusals(tmp_path: Path, model: ModelManifest) -> None:
    results, labels = make_set(tmp_path / "run", model, n=60)
    with pytest.raises(ConfigError, match="--method 'spline'"):
        calibrate_results(results, labels, out=tmp_path / "s.toml", method="spline")
    (tmp_path / "exists.toml").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists; .* --force"):
        calibrate_results(results, labels, out=tmp_path / "exists.toml")
    assert (tmp_path / "exists.toml").read_text() == "keep me"
    sited, _ = make_set(tmp_path / "sited", model, n=60, edit={0: {"site_file": "site.toml"}})
    with pytest.raises(ConfigError, match="WITHOUT --site"):
        calibrate_results(sited, labels, out=tmp_path / "s.toml")
    other = make_tiny_classifier(tmp_path / "other", labels=LABELS, seed=5)
    with pytest.raises(ConfigError, match="pass --model pointing at the model that produced these results"):
        calibrate_results(results, labels, out=tmp_path / "s.toml", model=other.parent)
    assert not (tmp_path / "s.toml").exists()


def test_results_identity_needs_one_name_version_and_sha() -> None:
    row = {"status": "scored", "model_name": "m", "model_version": "1", "model_sha256": "ab"}
    skipped = {"status": "failed", "model_name": "other", "model_version": "", "model_sha256": ""}
    def table(*rows: dict[str, str]) -> ResultsTable:
        return ResultsTable(Path("r.csv"), (), tuple(from_row({"path": "x", **r}) for r in rows))

    assert results_identity(table(row, row, skipped), where="r.csv") == ("m", "1", "ab")  # only scored rows count
    with pytest.raises(ConfigError, match=r"r.csv: scored rows must all name one model in 'model_version', found none"):
        results_identity(table(row | {"model_version": ""}), where="r.csv")
    with pytest.raises(ConfigError, match=r"'model_name', found \['m', 'n'\]"):
        results_identity(table(row, row | {"model_name": "n"}), where="r.csv")
