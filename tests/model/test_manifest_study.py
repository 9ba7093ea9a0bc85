"""Manifest fields for study-level triage: populations, per-population label validation, study operating points."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories import make_study_classifier, make_tiny_classifier

from cxrtriage.errors import ModelError
from cxrtriage.model.manifest import load_manifest, write_sealed_manifest


def test_fields_are_read(tmp_path: Path) -> None:
    m = load_manifest(make_study_classifier(tmp_path))
    assert [p.name for p in m.populations.values()] == ["child", "adult"]
    assert m.population_of(4.0) == "child" and m.population_of(30) == "adult"
    assert m.population_of(10.0) is None and m.population_of(None) is None
    assert m.populations["adult"].ages == "18 years and older"
    assert m.validated_for("effusion", "adult") and not m.validated_for("effusion", "child")
    assert m.validated_for("effusion", "unknown")  # validated somewhere: it may decide when the age is unknown
    assert not m.validated_for("nodule", "unknown")
    assert m.study is not None
    tier = m.study.tiers["urgent"]
    assert (tier.threshold("child"), tier.threshold("adult"), tier.threshold("unknown")) == (0.6, 0.4, 0.4)
    assert tier.labels == ("pneumonia", "effusion")


def test_a_manifest_without_them_lets_every_label_decide(tmp_path: Path) -> None:
    m = load_manifest(make_tiny_classifier(tmp_path))
    assert m.populations == {} and m.study is None
    assert all(m.validated_for(lab, "anything") for lab in m.labels)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda d: d["populations"]["adult"].update(age_years=[4, None]), "'child' and 'adult' overlap"),
    (lambda d: d["populations"].update(unknown={"age_years": [90, None]}), "other than 'unknown'"),
    (lambda d: d["populations"]["child"].update(age_years=[6, 1]), "min < max"),
    (lambda d: d["label_validation"]["labels"]["nodule"].update(elderly={"validated": True}), "names no population"),
    (lambda d: d["label_validation"]["labels"]["nodule"]["adult"].update(validated="yes"), "must be true or false"),
    (lambda d: d["label_validation"]["labels"].pop("nodule"), "no entry for label"),
    (lambda d: d["study_operating_points"]["tiers"].update(stat={"labels": ["abnormal"], "thresholds": {}}),
     "is not a tier"),
    (lambda d: d["study_operating_points"]["tiers"].pop("normal"), "must include 'normal'"),
    (lambda d: d["study_operating_points"]["tiers"]["urgent"]["thresholds"].pop("child"), "one threshold per population"),
    (lambda d: d["study_operating_points"]["tiers"]["urgent"].update(labels=["pneumothorax"]), "the model's labels"),
    (lambda d: d["study_operating_points"]["tiers"]["normal"]["thresholds"].update(adult=1.5), "within"),
    (lambda d: d["study_operating_points"].update(score="mean"), r"must be one of \['max'\]"),
    (lambda d: (d.pop("populations"), d.pop("label_validation")), "needs 'populations'"),
])
def test_invalid_fields_are_named(tmp_path: Path, edit: Callable[[dict[str, Any]], None], match: str) -> None:
    path = make_study_classifier(tmp_path)
    data = json.loads(path.read_text())
    edit(data)
    write_sealed_manifest(path, data)
    with pytest.raises(ModelError, match=match):
        load_manifest(path)
