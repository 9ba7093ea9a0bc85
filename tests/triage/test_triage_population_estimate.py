"""The population estimate from the image: the manifest section, the precedence (DICOM age, --population, the image
estimate when confident, unknown), the off switch, and the rows and run.json of a predict run (tiny classifier)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from factories import (
    STUDY_LABELS,
    edit_manifest,
    make_estimating_classifier,
    make_study_classifier,
    make_tiny_classifier,
    read_jsonl,
    write_dicom,
    write_textured_png,
)

from cxrtriage.errors import ModelError
from cxrtriage.io import read_image
from cxrtriage.model import load_classifier
from cxrtriage.model.manifest import ModelManifest, load_manifest
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict
from cxrtriage.preprocess import PixelNeeds
from cxrtriage.results import ImageRecord, Status, read_results
from cxrtriage.triage import PopulationChoice, PopulationSource, choose_population, load_policy, triage_record


def _pair(c: PopulationChoice) -> tuple[str | None, PopulationSource | None]:
    return c.population, c.source


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> ModelManifest:
    return load_manifest(make_estimating_classifier(tmp_path_factory.mktemp("est"), threshold=0.9))


def test_the_probability_is_the_logistic_of_the_pooled_features(manifest: ModelManifest) -> None:
    est = manifest.population_estimate
    assert est is not None and (est.estimates, est.versus, est.threshold) == ("child", "adult", 0.9)
    feats = np.random.default_rng(0).random((3, 4, 5, 5))
    z = feats.reshape(3, 4, -1).mean(axis=2) @ np.array([1.0, -1.0, 0.5, 0.0])
    np.testing.assert_allclose(est.probability(feats), 1 / (1 + np.exp(-z)), rtol=1e-12)
    with pytest.raises(ValueError, match=r"\[N, 4, h, w\]"):
        est.probability(feats[:, :3])


def test_precedence_dicom_age_then_option_then_a_confident_estimate_then_unknown(manifest: ModelManifest) -> None:
    # the DICOM age wins over everything, even an age outside every population
    c = choose_population(manifest, 40.0, "child", 0.99)
    assert (c.population, c.source) == ("adult", PopulationSource.DICOM_AGE)
    c = choose_population(manifest, 10.0, None, 0.99)
    assert (c.population, c.source) == ("unknown", PopulationSource.DICOM_AGE) and "outside every population" in c.note
    # then --population
    assert _pair(choose_population(manifest, None, "adult", 0.99)) == ("adult", PopulationSource.OPTION)
    # then the estimate, only when confident
    c = choose_population(manifest, None, None, 0.95)
    assert (c.population, c.source) == ("child", PopulationSource.IMAGE_ESTIMATE)
    assert c.estimate_note == ("population child estimated from the image (p 0.95 >= 0.90); give the age or "
                               "--population to override")
    assert choose_population(manifest, None, None, 0.9).population == "child"  # at the threshold counts
    for p in (0.89, None, float("nan")):
        assert _pair(choose_population(manifest, None, None, p)) == ("unknown", PopulationSource.NONE)


def test_population_unknown_turns_the_estimate_off(manifest: ModelManifest) -> None:
    assert _pair(choose_population(manifest, None, "unknown", 0.99)) == ("unknown", PopulationSource.OPTION)


def test_a_model_without_the_section_or_without_populations_ignores_any_probability(tmp_path: Path) -> None:
    plain = load_manifest(make_study_classifier(tmp_path / "study"))
    assert plain.population_estimate is None
    assert _pair(choose_population(plain, None, None, 0.999)) == ("unknown", PopulationSource.NONE)
    bare = load_manifest(make_tiny_classifier(tmp_path / "bare"))  # no populations: every label decides, as before
    assert _pair(choose_population(bare, None, None, 0.999)) == (None, None)


def test_triage_record_decides_on_the_estimated_population_and_says_so(manifest: ModelManifest) -> None:
    policy = load_policy()
    scores = dict.fromkeys(STUDY_LABELS, 0.01) | {"pneumonia": 0.5}  # urgent for an adult (0.4), not a child (0.6)
    rec = ImageRecord("x.png", Status.SCORED, scores=scores)
    child = triage_record(rec.replace(population_probability=0.95), manifest=manifest, policy=policy)
    assert (child.population, child.population_source, child.priority.value) == ("child", "image-estimate", "normal")
    assert child.priority_reason is not None and child.priority_reason.endswith(
        "(child); highest: pneumonia 0.50; population child estimated from the image (p 0.95 >= 0.90); give the age "
        "or --population to override")
    unsure = triage_record(rec.replace(population_probability=0.5), manifest=manifest, policy=policy)
    assert (unsure.population, unsure.population_source, unsure.priority.value) == ("unknown", "none", "urgent")
    assert "estimated" not in (unsure.priority_reason or "")
    aged = triage_record(rec.replace(population_probability=0.95, patient_age=50.0), manifest=manifest, policy=policy)
    assert (aged.population, aged.population_source, aged.priority.value) == ("adult", "dicom-age", "urgent")
    opted = triage_record(rec.replace(population_probability=0.95), manifest=manifest, policy=policy,
                          default_population="unknown")
    assert (opted.population, opted.population_source, opted.priority.value) == ("unknown", "option", "urgent")


@pytest.mark.parametrize(("change", "field"), [
    ({"estimates": "teen"}, "population_estimate.estimates"),
    ({"versus": "child"}, "population_estimate.versus"),
    ({"features_output": "logits"}, "population_estimate.features_output"),
    ({"pooling": "max"}, "population_estimate.pooling"),
    ({"weights": []}, "population_estimate.weights"),
    ({"weights": [1.0, "a"]}, "population_estimate.weights[1]"),
    ({"threshold": 1.0}, "population_estimate.threshold"),
    ({"bias": None}, "population_estimate.bias"),
])
def test_a_malformed_section_is_refused_naming_the_field(tmp_path: Path, change: dict[str, object], field: str) -> None:
    path = make_estimating_classifier(tmp_path)
    data = json.loads(path.read_text())
    data["population_estimate"] |= change
    with pytest.raises(ModelError, match=re.escape(f"'{field}'")):
        load_manifest(edit_manifest(path, data))


def _pngs(folder: Path, n: int) -> Path:
    for i in range(n):
        write_textured_png(folder / f"img{i}.png", 240 + 7 * i, 236 + 5 * i, seed=i)  # large enough to pass quality
    return folder


def _expected(model_dir: Path, paths: list[Path]) -> dict[str, float]:
    """The estimate of each image computed here, independently of the pipeline: features, mean, weights."""
    clf = load_classifier(model_dir, device="cpu")
    est = clf.manifest.population_estimate
    assert est is not None
    needs = PixelNeeds((clf.manifest.preprocessing,))  # read as predict reads by default: reduced as far as it may
    x = np.stack([clf.preprocess(read_image(p, max_scale=needs)).array for p in paths])
    feats = clf.run(x, features=True).features
    return {p.name: float(v) for p, v in zip(paths, est.probability(feats), strict=True)}


def test_predict_fills_the_source_and_probability_and_counts_them_in_run_json(tmp_path: Path) -> None:
    folder = _pngs(tmp_path / "in", 6)
    base = make_estimating_classifier(tmp_path / "m0")
    expected = _expected(base.parent, sorted(folder.iterdir()))
    # the threshold halfway through the images' own probabilities: some are estimated child, some are not
    probs = sorted(expected.values())
    threshold = round((probs[2] + probs[3]) / 2, 9)
    path = make_estimating_classifier(tmp_path / "m", threshold=threshold)
    write_dicom(tmp_path / "in" / "aged.dcm", rows=256, cols=256, PatientAge="045Y")
    model = load_classifier(path.parent, device="cpu")
    run_predict(PredictConfig(inputs=(folder,), out_dir=tmp_path / "out", workers=0), model=model)
    rows = {Path(str(r["path"])).name: r for r in read_jsonl(tmp_path / "out" / "results.jsonl")}
    for name, p in expected.items():
        r = rows[name]
        assert r["population_probability"] == pytest.approx(p, abs=1e-6)
        child = p >= threshold
        assert (r["population"], r["population_source"]) == (("child", "image-estimate") if child else
                                                             ("unknown", "none"))
        assert ("population child estimated from the image" in str(r["priority_reason"])) == child
    assert (rows["aged.dcm"]["population"], rows["aged.dcm"]["population_source"]) == ("adult", "dicom-age")
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    counts = run["counts"]
    assert counts["images_by_population_source"] == {"dicom-age": 1, "image-estimate": 3, "none": 3}
    assert counts["images_by_population"] == {"adult": 1, "child": 3, "unknown": 3}
    assert run["study_operating_points"]["population_estimate"]["in_use"] is True
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert "population_source" in header and "population_probability" in header
    # the rows as written decide the same again (what evaluate and calibrate do with them)
    policy = load_policy()
    for rec in read_results(tmp_path / "out" / "results.csv").records:
        again = triage_record(rec, manifest=model.manifest, policy=policy)
        assert (again.population, again.population_source, again.priority) == (
            rec.population, rec.population_source, rec.priority)

    # --population unknown: the estimate is off (not even computed); every image without an age is unknown
    run_predict(PredictConfig(inputs=(folder,), out_dir=tmp_path / "off", workers=0, population="unknown"), model=model)
    off = [r for r in read_jsonl(tmp_path / "off" / "results.jsonl") if r["path"] != str(folder / "aged.dcm")]
    assert {(r["population"], r["population_source"], r["population_probability"]) for r in off} == {
        ("unknown", "option", None)}
    run = json.loads((tmp_path / "off" / "run.json").read_text())
    assert run["study_operating_points"]["population_estimate"]["in_use"] is False


def test_a_model_without_the_section_writes_the_same_columns_as_before(tmp_path: Path) -> None:
    folder = _pngs(tmp_path / "in", 2)
    model = load_classifier(make_study_classifier(tmp_path / "m").parent, device="cpu")
    run_predict(PredictConfig(inputs=(folder,), out_dir=tmp_path / "out", workers=0), model=model)
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert "population" in header and "population_source" not in header and "population_probability" not in header
    assert {r["population"] for r in read_jsonl(tmp_path / "out" / "results.jsonl")} == {"unknown"}
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert "images_by_population_source" not in run["counts"]
