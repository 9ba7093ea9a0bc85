"""`models validate` of a model imported without operating points: predict gives scores without priorities, validate
sets the operating points on the labelled images (and says how far they hold), and predict triages afterwards."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from factories import edit_manifest, make_tiny_classifier, read_jsonl, write_textured_png

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.model import load_classifier
from cxrtriage.model.manifest import load_manifest
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict
from cxrtriage.pipeline.validate import CARD_SECTION, validate_model

LABELS = ("abnormal", "effusion")
N_IMAGES = 40


@pytest.fixture()
def bare(tmp_path: Path) -> Path:
    """A tiny classifier folder whose manifest has no thresholds (as `models import --onnx` writes it), with a card."""
    folder = tmp_path / "bare"
    man = make_tiny_classifier(folder, labels=LABELS, name="bare")
    data = json.loads(man.read_text())
    del data["thresholds"]
    data["model_card"] = "MODEL_CARD.md"
    (folder / "MODEL_CARD.md").write_text("# Model card: bare\n\n## Performance on local data\n\nUNKNOWN: not validated "
                                          "locally.\n")
    edit_manifest(man, data)
    return folder


@pytest.fixture()
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    for i in range(N_IMAGES):
        write_textured_png(folder / f"img{i:02d}.png", 240, 232 + i % 7, seed=i)  # >= 224 px: passes quality
    return folder


def _scores(out: Path) -> dict[str, dict[str, float]]:
    return {Path(str(r["path"])).name: {lab: float(r[f"score_{lab}"]) for lab in LABELS}  # type: ignore[arg-type]
            for r in read_jsonl(out / "results.jsonl") if r["status"] == "scored"}


def _labels_csv(path: Path, scores: dict[str, dict[str, float]], columns: tuple[str, ...]) -> Path:
    """Truth that the scores mostly rank: positive where the score is above its median, with every fifth image
    flipped (so neither operating point is perfect)."""
    names = sorted(scores)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", *columns, "sex"])
        for k, name in enumerate(names):
            truth = []
            for lab in columns:
                med = float(np.median([scores[n][lab] for n in names]))
                y = int(scores[name][lab] > med)
                truth.append(1 - y if k % 5 == 0 else y)
            w.writerow([name, *truth, "F" if k % 2 else "M"])
    return path


def _predict(model: Path, images: Path, out: Path, **options: object) -> None:
    run_predict(PredictConfig(inputs=(images,), out_dir=out, model=str(model), workers=0, **options))  # type: ignore[arg-type]


def test_predict_without_operating_points_gives_scores_and_says_so(bare: Path, images: Path, tmp_path: Path) -> None:
    out = tmp_path / "p"
    _predict(bare, images, out)
    rows = read_jsonl(out / "results.jsonl")
    assert len(rows) == N_IMAGES and all(r["status"] == "scored" for r in rows)
    assert all(r["score_abnormal"] is not None for r in rows)  # the scores are there: what validate sets points on
    assert {r["priority"] for r in rows} == {"not_assessed"}
    assert all("has no operating points yet" in str(r["priority_reason"]) and "models validate" in
               str(r["priority_reason"]) for r in rows)
    run = json.loads((out / "run.json").read_text())
    assert run["scores_only"] is True and run["operating_point"] == "none"
    assert run["study_operating_points"]["mode"] == "none"
    assert any("cxrtriage models validate" in n for n in run["notes"])
    with (out / "worklist.csv").open() as f:
        assert {r["priority"] for r in csv.DictReader(f)} == {"not_assessed"}


def test_heatmaps_without_thresholds_are_refused_before_scoring(bare: Path, images: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no thresholds yet.*models validate"):
        _predict(bare, images, tmp_path / "h", heatmaps=True)
    assert not (tmp_path / "h" / "results.csv").exists()


def test_validate_sets_operating_points_that_predict_then_triages_with(bare: Path, images: Path, tmp_path: Path) -> None:
    _predict(bare, images, tmp_path / "p0")
    scores = _scores(tmp_path / "p0")
    labels = _labels_csv(tmp_path / "labels.csv", scores, LABELS)
    before = load_manifest(bare / "manifest.json")

    res = validate_model(bare, labels, [images], tmp_path / "val", by=("sex",), n_boot=50, workers=0)

    after = load_classifier(bare).manifest  # sealed, and agrees with its graph
    assert after.version.startswith("0.0.1-test-validated.") and after.integrity != before.integrity
    assert res.operating_points is not None and set(res.operating_points.thresholds) == set(LABELS)
    assert set(after.thresholds) == set(LABELS)
    truth = {r["image"]: r for r in csv.DictReader(labels.open())}
    for lab in LABELS:
        t = after.thresholds[lab]
        y = np.array([int(truth[n][lab]) for n in sorted(scores)])
        s = np.array([scores[n][lab] for n in sorted(scores)])
        # rule_out reaches the target sensitivity on these images, and the manifest's figures are what it gives
        sens = float(np.mean(s[y == 1] >= t.rule_out.threshold))
        spec = float(np.mean(s[y == 0] < t.rule_out.threshold))
        assert sens >= 0.95 and sens == pytest.approx(t.rule_out.sensitivity)
        assert spec == pytest.approx(t.rule_out.specificity)
        assert t.balanced.sensitivity == pytest.approx(float(np.mean(s[y == 1] >= t.balanced.threshold)))
        assert t.rule_out.threshold <= t.balanced.threshold
    local = after.metrics["local_validation"]
    assert local["operating_points_set"]["labels"] == sorted(LABELS)
    assert "optimistic" in local["operating_points_set"]["note"]
    # every figure written is at the operating points now in force, per label and per subgroup
    ops = local["labels"]["effusion"]["operating_points"]
    assert [(o["kind"], o["threshold"]) for o in ops] == [
        ("rule_out", after.thresholds["effusion"].rule_out.threshold),
        ("balanced", after.thresholds["effusion"].balanced.threshold)]
    assert all(d["effusion"]["operating_points"] for d in local["subgroups"]["sex"].values())
    evaluation = json.loads((tmp_path / "val" / "evaluation.json").read_text())
    assert evaluation["labels_metrics"]["abnormal"]["operating_points"][0]["sensitivity"] >= 0.95
    card = (bare / "MODEL_CARD.md").read_text()
    assert CARD_SECTION in card and "Operating points set by this validation" in card and "optimistic" in card
    assert "UNKNOWN: not validated locally" not in card

    out = tmp_path / "p1"
    _predict(bare, images, out)
    rows = read_jsonl(out / "results.jsonl")
    assert {r["priority"] for r in rows} - {"not_assessed"}, "the validated model triages"
    run = json.loads((out / "run.json").read_text())
    assert run["scores_only"] is False and run["operating_point"] == "balanced"
    assert run["thresholds"]["abnormal"]["rule_out"] == after.thresholds["abnormal"].rule_out.threshold


def test_a_label_left_without_operating_points_blocks_triage_until_validated(bare: Path, images: Path,
                                                                             tmp_path: Path) -> None:
    _predict(bare, images, tmp_path / "p0")
    scores = _scores(tmp_path / "p0")
    only_abnormal = _labels_csv(tmp_path / "abnormal.csv", scores, ("abnormal",))
    res = validate_model(bare, only_abnormal, [images], tmp_path / "v1", n_boot=50, workers=0)
    assert res.operating_points is not None and set(res.operating_points.thresholds) == {"abnormal"}
    assert "no column" in res.operating_points.not_set["effusion"]
    first = load_manifest(bare / "manifest.json")
    with pytest.raises(ModelError, match="no rule_out/balanced thresholds for label 'effusion'.*models validate"):
        _predict(bare, images, tmp_path / "p1")

    both = _labels_csv(tmp_path / "both.csv", scores, LABELS)
    res = validate_model(bare, both, [images], tmp_path / "v2", n_boot=50, workers=0)
    assert res.operating_points is not None and set(res.operating_points.thresholds) == {"effusion"}
    second = load_manifest(bare / "manifest.json")
    assert second.thresholds["abnormal"] == first.thresholds["abnormal"], "points already set are never moved"
    assert len(list((bare / "history").glob("manifest-*.json"))) == 2
    _predict(bare, images, tmp_path / "p2")  # every label has operating points now


def test_a_label_with_one_class_gets_no_operating_point(bare: Path, images: Path, tmp_path: Path) -> None:
    _predict(bare, images, tmp_path / "p0")
    names = sorted(_scores(tmp_path / "p0"))
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "abnormal", "effusion"])
        for k, name in enumerate(names):
            w.writerow([name, k % 2, 0])
    res = validate_model(bare, labels, [images], tmp_path / "v", n_boot=50, workers=0)
    assert res.operating_points is not None
    assert "0 positive(s) and 40 negative(s)" in res.operating_points.not_set["effusion"]
    assert set(load_manifest(bare / "manifest.json").thresholds) == {"abnormal"}


def test_a_bad_target_sensitivity_is_refused_before_scoring(bare: Path, images: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--target-sensitivity must be between 0 and 1"):
        validate_model(bare, tmp_path / "labels.csv", [images], tmp_path / "v", target_sensitivity=1.0, workers=0)
    assert not (tmp_path / "v").exists()


def test_measured_rule_out_is_never_above_balanced() -> None:
    """Where Youden's point already reaches the target sensitivity, the highest threshold that still does lies above
    it and catches fewer positives: the rule-out point set by validate is then the balanced one."""
    from types import SimpleNamespace

    from cxrtriage.pipeline.validate import measure_operating_points

    y = np.r_[np.ones(20), np.zeros(80)]
    s = np.r_[np.linspace(0.80, 0.98, 19), 0.30, np.linspace(0.02, 0.25, 77), np.linspace(0.31, 0.39, 3)]
    ev = SimpleNamespace(labels={"effusion": None}, curves={"effusion": (y, s)}, not_evaluated={})
    t = measure_operating_points(ev, ["effusion"]).thresholds["effusion"]  # type: ignore[arg-type]
    assert t.balanced.sensitivity == 1.0
    assert t.rule_out == t.balanced  # before: rule_out above the 0.80 case, sensitivity 0.95
