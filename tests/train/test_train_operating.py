"""The recipe's label validation and study-level operating points, on synthetic held-out scores (no real data)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import make_tiny_classifier
from sklearn.linear_model import LogisticRegression

from cxrtriage.model.manifest import load_manifest, write_sealed_manifest
from cxrtriage.train.data import Record
from cxrtriage.train.evaluation import fit_logistic
from cxrtriage.train.operating import HeldOut, operating_points_from_scores, study_ids
from cxrtriage.triage import load_policy

LABELS = ("abnormal", "pneumonia", "effusion", "nodule")


def held_out(seed: int = 0, n: int = 400) -> HeldOut:
    """Pediatric studies know abnormal/pneumonia only (well separated); adult studies know every label: abnormal and
    effusion carry signal, nodule is noise."""
    rng = np.random.default_rng(seed)
    probs, ys, splits, pops, studies = [], [], [], [], []
    for k in range(n):
        pop = "pediatric" if k % 2 else "adult"
        abnormal = float(rng.random() < (0.6 if pop == "pediatric" else 0.8))
        pneumonia = abnormal if pop == "pediatric" else float(abnormal and rng.random() < 0.3)
        effusion = np.nan if pop == "pediatric" else float(abnormal and rng.random() < 0.3)
        nodule = np.nan if pop == "pediatric" else float(abnormal and rng.random() < 0.3)
        sep = 3.0 if pop == "pediatric" else 1.2
        p = [1 / (1 + np.exp(-rng.normal(-1.5 + sep * abnormal, 1.0))),
             1 / (1 + np.exp(-rng.normal(-2.0 + sep * pneumonia, 1.0))),
             1 / (1 + np.exp(-rng.normal(-2.0 + 2.0 * np.nan_to_num(effusion), 1.0))),
             float(rng.uniform(0, 0.3))]
        probs.append(p)
        ys.append([abnormal, pneumonia, effusion, nodule])
        splits.append("val" if k < n // 2 else "test")
        pops.append(pop)
        studies.append(f"s{k}")
    return HeldOut(np.array(probs), np.array(ys, dtype=float), np.array(splits), np.array(pops), np.array(studies), LABELS)


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:  # type: ignore[type-arg]
    path = make_tiny_classifier(tmp_path_factory.mktemp("m"), labels=LABELS)
    return operating_points_from_scores(held_out(), load_manifest(path), load_policy(), n_boot=200), path


def test_labels_are_validated_per_population(result) -> None:  # type: ignore[no-untyped-def]
    lv = result[0]["label_validation"]["labels"]
    assert lv["abnormal"]["pediatric"]["validated"] and lv["abnormal"]["adult"]["validated"]
    assert lv["effusion"]["adult"]["validated"]
    assert not lv["effusion"]["pediatric"]["validated"]
    assert lv["effusion"]["pediatric"]["note"] == "not labelled in this population's data"
    nodule = lv["nodule"]["adult"]
    assert not nodule["validated"] and nodule["ci95"][0] <= 0.5 and "does not lie above 0.5" in nodule["note"]


def test_thresholds_meet_their_targets_on_validation(result) -> None:  # type: ignore[no-untyped-def]
    tiers = result[0]["study_operating_points"]["tiers"]
    assert set(tiers) == {"urgent", "normal"}
    assert tiers["urgent"]["labels"] == ["pneumonia", "effusion"]
    for pop in ("pediatric", "adult"):
        assert tiers["normal"]["validation"][pop]["sensitivity"] >= 0.95
        assert tiers["urgent"]["validation"][pop]["specificity"] >= 0.95
        assert set(tiers["normal"]["test"]) == {pop for p in ("pediatric", "adult") for pop in (p, f"{p} (age unknown)")}
    # the unknown-population rules are the most cautious: never fewer studies flagged than with the known population
    for t in ("urgent", "normal"):
        for pop in ("pediatric", "adult"):
            assert tiers[t]["test"][f"{pop} (age unknown)"]["sensitivity"] >= tiers[t]["test"][pop]["sensitivity"]


def test_the_fields_make_a_valid_manifest(result) -> None:  # type: ignore[no-untyped-def]
    fields, path = result
    data = json.loads(path.read_text()) | fields
    man = load_manifest(write_sealed_manifest(path, data))
    assert man.study is not None and set(man.populations) == {"pediatric", "adult"}
    assert man.validated_for("effusion", "adult") and not man.validated_for("nodule", "adult")
    cand = fields["study_operating_points"]["candidates"]
    assert set(cand) == {"max (chosen)", "summary label only", "noisy-OR", "logistic regression (fitted on validation)"}


def test_recomputing_gives_the_same_operating_points(result, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    again = operating_points_from_scores(held_out(), load_manifest(make_tiny_classifier(tmp_path, labels=LABELS)),
                                         load_policy(), n_boot=200)
    assert again == result[0]


def test_ieee_patients_are_studies_other_sources_one_image_each() -> None:
    recs = [Record("ieee_lungs/a.jpg", "ieee_lungs", "ieee_lungs:7", {}), Record("ieee_lungs/b.jpg", "ieee_lungs",
            "ieee_lungs:7", {}), Record("nih14/x.png", "nih14", "nih14:7", {}),
            Record("kermany224/p1.jpeg", "kermany224", "kermany224:person1", {}),
            Record("kermany224/p2.jpeg", "kermany224", "kermany224:person1", {})]
    assert study_ids(recs) == ["ieee_lungs:7", "ieee_lungs:7", "nih14/x.png", "kermany224/p1.jpeg", "kermany224/p2.jpeg"]


def test_fit_logistic_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    y = (rng.random(500) < 1 / (1 + np.exp(-(x @ [1.0, -2.0, 0.5] + 0.3)))).astype(float)
    beta = fit_logistic(x, y, l2=1.0)
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10_000).fit(x, y)  # the same penalty: C = 1 / l2
    np.testing.assert_allclose(beta[:-1], ref.coef_[0], atol=1e-4)
    assert beta[-1] == pytest.approx(ref.intercept_[0], abs=1e-4)
