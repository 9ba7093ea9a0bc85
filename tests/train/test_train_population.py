"""The recipe's population estimate from the image, on synthetic pooled features (no real data): fitted on the train
split only, its threshold above every validation adult, NIH patients aged 6-17 left out, and reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import make_study_classifier

from cxrtriage.model.manifest import load_manifest, write_sealed_manifest
from cxrtriage.train.data import Record
from cxrtriage.train.evaluation import sigmoid
from cxrtriage.train.population import fit_population_estimate, fitting_group


def synthetic(seed: int = 0, n: int = 600) -> tuple[np.ndarray, list[Record]]:
    """Kermany children and adults (NIH, ieee) whose 8 pooled features differ in their first two channels; a few
    NIH teenagers in every split."""
    rng = np.random.default_rng(seed)
    x, recs = [], []
    for k in range(n):
        split = ("train", "train", "train", "val", "test")[k % 5]
        kind = k % 4
        if kind < 2:
            src, age, shift = "kermany224", None, 3.0
        elif kind == 2:
            src, age, shift = "nih14", float(rng.integers(18, 90)), -3.0
        else:
            src, age, shift = "ieee_lungs", None, -2.5
        if k % 50 == 7:
            src, age, shift = "nih14", 12.0, 0.0
        x.append(rng.normal(0, 0.7, 8) + np.r_[shift, shift / 2, np.zeros(6)])
        recs.append(Record(f"{src}/{k}.png", src, f"{src}:{k}", {}, age=age, split=split))
    return np.array(x), recs


@pytest.fixture(scope="module")
def fitted() -> tuple[dict, np.ndarray, list[Record]]:  # type: ignore[type-arg]
    x, recs = synthetic()
    return fit_population_estimate(x, recs, n_boot=50), x, recs


def test_teenagers_and_children_of_other_sources_belong_to_neither_population() -> None:
    assert fitting_group(Record("nih14/a.png", "nih14", "nih14:1", {}, age=12.0)) == "neither"
    assert fitting_group(Record("nih14/a.png", "nih14", "nih14:1", {}, age=3.0)) == "neither"
    assert fitting_group(Record("nih14/a.png", "nih14", "nih14:1", {}, age=18.0)) == "adult"
    assert fitting_group(Record("ieee_lungs/a.jpg", "ieee_lungs", "ieee_lungs:1", {})) == "adult"  # age unknown
    assert fitting_group(Record("kermany224/a.jpeg", "kermany224", "kermany224:1", {})) == "pediatric"


def test_the_threshold_lies_above_every_validation_adult(fitted) -> None:  # type: ignore[no-untyped-def]
    sec, x, recs = fitted
    p = sigmoid(x @ np.array(sec["weights"]) + sec["bias"])
    val_adults = [i for i, r in enumerate(recs) if r.split == "val" and fitting_group(r) == "adult"]
    assert p[val_adults].max() < sec["threshold"]
    assert sec["validation"]["adults"]["estimated_pediatric"] == 0
    assert sec["validation"]["highest_adult_probability"] == pytest.approx(p[val_adults].max(), abs=1e-6)
    assert 0.5 <= sec["threshold"] < 1
    # the test split's figures are what the section's own weights and threshold give
    test_kids = [i for i, r in enumerate(recs) if r.split == "test" and r.source == "kermany224"]
    assert sec["test"]["children_1_5_kermany"]["estimated_pediatric"] == int((p[test_kids] >= sec["threshold"]).sum())
    assert sec["test"]["children_1_5_kermany"]["share"] > 0.5


def test_only_the_train_split_and_the_two_populations_are_fitted(fitted) -> None:  # type: ignore[no-untyped-def]
    sec, x, recs = fitted
    moved = x.copy()
    for i, r in enumerate(recs):  # change every image the fit must not see: validation, test, the teenagers
        if r.split != "train" or fitting_group(r) == "neither":
            moved[i] = moved[i] * 3 + 1
    again = fit_population_estimate(moved, recs, n_boot=50)
    np.testing.assert_allclose(again["weights"], sec["weights"], atol=1e-7)
    assert again["bias"] == pytest.approx(sec["bias"], abs=1e-7)
    assert "NIH patients aged 6-17" in sec["fitted_on"]


def test_recomputing_gives_the_same_section_and_it_makes_a_valid_manifest(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sec, x, recs = fitted
    assert fit_population_estimate(x, recs, n_boot=50) == sec
    path = make_study_classifier(tmp_path)
    data = json.loads(path.read_text())
    data["populations"] = {"pediatric": {"age_years": [1, 6]}, "adult": {"age_years": [18, None]}}
    for per in data["label_validation"]["labels"].values():
        per["pediatric"] = per.pop("child")
    for tier in data["study_operating_points"]["tiers"].values():
        tier["thresholds"]["pediatric"] = tier["thresholds"].pop("child")
    data["population_estimate"] = sec
    man = load_manifest(write_sealed_manifest(path, data))
    est = man.population_estimate
    assert est is not None and (est.estimates, est.versus, est.threshold) == ("pediatric", "adult", sec["threshold"])
    feats = x[:5, :, None, None] * np.ones((1, 1, 2, 2))  # pooled back to x
    np.testing.assert_allclose(est.probability(feats), sigmoid(x[:5] @ np.array(sec["weights"]) + sec["bias"]),
                               rtol=1e-9)
