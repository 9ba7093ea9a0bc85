"""The population estimate from the image on real images, through predict with the shipped model and the default
policy: Kermany children without an age are triaged as children, adults (NIH, the RG1 DICOM) are not, an age in DICOM
still wins; and `cxrtriage train population-estimate` reproduces the shipped manifest section."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import link_files, predict_rows, write_dicom

from cxrtriage.model import Classifier, load_classifier
from cxrtriage.model.manifest import load_manifest, read_manifest_data
from cxrtriage.train.operating import records_from_splits
from cxrtriage.train.population import OTHER_ADULTS, fit_population_estimate, pooled_features

pytestmark = [pytest.mark.data, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CLASSIFIER = REPO / "models" / "cxr-classifier"
SPLITS = CLASSIFIER / "splits" / "splits.csv"


@pytest.fixture(scope="module")
def model() -> Classifier:
    return load_classifier(CLASSIFIER, device="cpu")


def test_kermany_children_without_an_age_are_triaged_as_children(model: Classifier, shared_data: Path,
                                                                 tmp_path: Path) -> None:
    normals = sorted((shared_data / "kermany224" / "test" / "NORMAL").iterdir())[::15]
    pneumonia = sorted((shared_data / "kermany224" / "test" / "PNEUMONIA").iterdir())[::40]
    folder = link_files(normals + pneumonia, tmp_path / "in")
    rows = predict_rows(model, folder, tmp_path / "out")
    est = model.manifest.population_estimate
    assert est is not None
    estimated = [r for r in rows.values() if r["population_source"] == "image-estimate"]
    assert len(estimated) >= 0.85 * len(rows)  # test split: 576 of 624 (92%)
    for r in rows.values():
        child = float(r["population_probability"]) >= est.threshold  # type: ignore[arg-type]
        assert (r["population"], r["population_source"]) == (("pediatric", "image-estimate") if child else
                                                             ("unknown", "none"))
    for r in estimated:
        reason = str(r["priority_reason"])
        assert "pediatric)" in reason and "population pediatric estimated from the image (p " in reason
        assert reason.endswith("give the age or --population to override")
    # an estimated child is triaged exactly as with --population pediatric (its operating points and labels)
    told = predict_rows(model, folder, tmp_path / "told", population="pediatric")
    for name, r in rows.items():
        if r["population_source"] == "image-estimate":
            assert r["priority"] == told[name]["priority"]
    assert all(rows[p.name]["priority"] != "normal" for p in pneumonia)
    # more normal children called normal than with the estimate off (--population unknown); full test set: 141 of 234
    # (60.3%) against 124 (53.0%); with --population pediatric 156
    off = predict_rows(model, folder, tmp_path / "off", population="unknown")
    assert {r["population_source"] for r in off.values()} == {"option"}
    with_estimate = sum(rows[p.name]["priority"] == "normal" for p in normals)
    assert with_estimate > sum(off[p.name]["priority"] == "normal" for p in normals), with_estimate


def test_adults_are_not_estimated_children_and_the_dicom_age_still_wins(model: Classifier, shared_data: Path,
                                                                        tmp_path: Path) -> None:
    test = {r["path"] for r in csv.DictReader(open(SPLITS)) if r["split"] == "test" and r["source"] == "nih14"}
    ages = {r["image"]: float(r["age"]) for r in csv.DictReader(open(shared_data / "nih14" / "labels.csv"))}
    nih = sorted(shared_data / "nih14" / p.split("/", 1)[1] for p in test if ages[p.split("/", 1)[1]] >= 18)
    rg1 = shared_data / "dicom" / "cxr_real" / "nema_wg04_RG1_UNCR.dcm"
    folder = link_files([*nih, rg1], tmp_path / "in")
    rows = predict_rows(model, folder, tmp_path / "out")
    assert len(rows) == len(nih) + 1
    nih_rows = [rows[p.name] for p in nih]
    assert {(r["population"], r["population_source"]) for r in nih_rows} == {("unknown", "none")}
    est = model.manifest.population_estimate
    assert est is not None
    assert max(float(r["population_probability"]) for r in nih_rows) < est.threshold  # type: ignore[arg-type]
    # the RG1 chest carries an adult age: the age decides; its image estimate is far from pediatric anyway
    r = rows[rg1.name]
    assert (r["population"], r["population_source"]) == ("adult", "dicom-age")
    assert float(r["population_probability"]) < 0.5  # type: ignore[arg-type]

    # a Kermany child the estimate calls pediatric, written as DICOM with an adult's age: the age wins
    child = next(p for p in sorted((shared_data / "kermany224" / "test" / "NORMAL").iterdir())[::15]
                 if float(predict_rows(model, link_files([p], tmp_path / f"k-{p.stem}"), tmp_path / f"ko-{p.stem}")[p.name]
                          ["population_probability"]) >= est.threshold)  # type: ignore[arg-type]
    pixels = cv2.imread(str(child), cv2.IMREAD_GRAYSCALE)
    dcm = write_dicom(tmp_path / "aged" / "child.dcm", pixels=pixels, bits_stored=8, PatientAge="040Y")
    row = predict_rows(model, dcm.parent, tmp_path / "aged-out")["child.dcm"]
    assert (row["population"], row["population_source"]) == ("adult", "dicom-age")
    assert float(row["population_probability"]) >= est.threshold  # type: ignore[arg-type]
    assert "estimated" not in str(row["priority_reason"])


def test_the_shipped_population_estimate_is_reproduced(shared_data: Path) -> None:
    """`cxrtriage train population-estimate` recomputes the shipped section: same weights (to float noise), same
    threshold and the same figures."""
    model = load_classifier(CLASSIFIER, device="cpu")
    shipped = read_manifest_data(CLASSIFIER / "manifest.json")["population_estimate"]
    records = records_from_splits(shared_data, SPLITS)
    x = pooled_features(shared_data, model, [r.path for r in records])
    extra = sorted(p.relative_to(shared_data).as_posix() for p in (shared_data / OTHER_ADULTS).glob("*.dcm"))
    again = fit_population_estimate(x, records, other_adults=dict(zip(extra, pooled_features(shared_data, model, extra),
                                                                      strict=True)))
    np.testing.assert_allclose(again.pop("weights"), shipped["weights"], atol=1e-5)
    assert again.pop("bias") == pytest.approx(shipped["bias"], abs=1e-4)
    assert again.pop("threshold") == pytest.approx(shipped["threshold"], abs=1e-5)
    rest = {k: v for k, v in shipped.items() if k not in ("weights", "bias", "threshold")}
    for key in ("validation", "test"):  # counts exactly; probabilities to 3 decimals
        for k in ("highest_adult_probability", "lowest_child_probability"):
            if k in again[key]:
                assert again[key].pop(k) == pytest.approx(rest[key].pop(k), abs=1e-3)
    for y_again, y_shipped in zip(again.pop("nih_under_18_all_splits"), rest.pop("nih_under_18_all_splits"), strict=True):
        assert y_again.pop("probability") == pytest.approx(y_shipped.pop("probability"), abs=1e-3)
        assert y_again == y_shipped
    others_again, others_shipped = again.pop("other_adult_images"), rest.pop("other_adult_images")
    assert others_again.keys() == others_shipped.keys() and len(others_again) == 3
    for name, o in others_again.items():
        assert o["probability"] == pytest.approx(others_shipped[name]["probability"], abs=1e-3)
        assert o["estimated_pediatric"] is others_shipped[name]["estimated_pediatric"] is False
    assert again == rest
    assert load_manifest(CLASSIFIER / "manifest.json").population_estimate is not None
