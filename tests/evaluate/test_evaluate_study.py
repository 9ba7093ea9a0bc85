"""Study-level truth and tier statistics, thresholds for a share of negatives, and the study level of calibrate."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from factories import STUDY_LABELS, make_study_classifier

from cxrtriage.evaluate.calibrate import _Study, fit_study
from cxrtriage.evaluate.metrics import between_cases, threshold_for_max_share
from cxrtriage.evaluate.study import hit, study_priority, tier_result, tier_truth
from cxrtriage.model.manifest import load_manifest
from cxrtriage.results import Priority
from cxrtriage.triage import SiteCalibration, decide_priority, load_policy, load_site, write_site

P = Priority


def test_tier_truth() -> None:
    urgent = ["pneumonia", "effusion"]
    assert tier_truth({"pneumonia": 1, "abnormal": 1}, urgent) == 1
    assert tier_truth({"pneumonia": 0, "effusion": math.nan, "abnormal": 1}, urgent) == 0  # a known urgent label
    assert tier_truth({"abnormal": 0}, urgent) == 0  # a normal study has no urgent finding
    assert math.isnan(tier_truth({"abnormal": 1}, urgent))  # abnormal, but nothing known about urgent findings
    assert math.isnan(tier_truth({}, urgent))


def test_hits_and_counts() -> None:
    assert [hit(p, "normal") for p in (P.CRITICAL, P.URGENT, P.ROUTINE, P.NORMAL)] == [True, True, True, False]
    assert [hit(p, "urgent") for p in (P.CRITICAL, P.URGENT, P.ROUTINE, P.NORMAL)] == [True, True, False, False]
    assert [hit(p, "critical") for p in (P.CRITICAL, P.URGENT)] == [True, False]
    r = tier_result("normal", "all", [(P.URGENT, 1), (P.NORMAL, 1), (P.NORMAL, 0), (P.ROUTINE, 0), (P.NORMAL, math.nan)])
    assert (r.n_pos, r.n_neg, r.true_pos, r.true_neg, r.sensitivity, r.specificity) == (2, 2, 1, 1, 0.5, 0.5)
    lo, hi = r.sensitivity_ci
    assert 0 < lo < 0.5 < hi < 1
    assert r.to_json()["specificity"] == 0.5
    assert study_priority([P.NOT_ASSESSED, P.NORMAL, P.ROUTINE]) is P.ROUTINE
    assert study_priority([P.NOT_ASSESSED]) is P.NOT_ASSESSED


@pytest.mark.parametrize(("scores", "share", "flagged"), [
    ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05], 0.1, 1),
    ([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05], 0.25, 2),
    ([0.9, 0.8], 0.0, 0),
    ([0.5, 0.5, 0.5, 0.1], 0.3, 0),  # a tie cannot be split: none rather than too many
    ([0.6, 0.5, 0.5, 0.1], 0.5, 1),
])
def test_threshold_for_max_share(scores: list[float], share: float, flagged: int) -> None:
    t = threshold_for_max_share(scores, share)
    s = np.array(scores)
    assert int((s >= t).sum()) == flagged
    assert not np.any(s == t) or flagged == len(s)  # never exactly on a case's score
    with pytest.raises(ValueError, match="no negatives"):
        threshold_for_max_share([], 0.1)


def test_between_cases() -> None:
    assert between_cases([0.2, 0.4, 0.6], 0.4) == pytest.approx(0.3)
    assert between_cases([0.2, 0.4, 0.6], 0.2) == pytest.approx(0.1)  # nothing lower: halfway to 0


def _studies(n: int, seed: int, population: str) -> list[_Study]:
    """Synthetic studies: abnormal ones score higher; a fifth of them also have pneumonia (urgent)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        abnormal = float(rng.random() < 0.6)
        pneumonia = float(abnormal and rng.random() < 0.3)
        scores = {lab: float(rng.uniform(0, 0.3)) for lab in STUDY_LABELS}
        scores["abnormal"] = float(np.clip(rng.normal(0.35 + 0.3 * abnormal, 0.15), 0, 1))
        scores["pneumonia"] = float(np.clip(rng.normal(0.2 + 0.4 * pneumonia, 0.12), 0, 1))
        out.append(_Study(scores, {"abnormal": abnormal, "pneumonia": pneumonia, "effusion": 0.0}, population))
    return out


@pytest.mark.parametrize(("target", "max_false"), [(0.95, 0.05), (0.9, 0.1), (0.99, 0.0)])
def test_fit_study_reaches_its_targets_and_says_what_it_achieved(tmp_path: Path, target: float, max_false: float) -> None:
    man = load_manifest(make_study_classifier(tmp_path / "m"))
    policy = load_policy()
    studies = _studies(300, 1, "adult") + _studies(200, 2, "child")
    base = SiteCalibration(man.name, man.version, man.sha256, "platt", target, {})
    fit = fit_study(studies, manifest=man, policy=policy, site=base, target_sensitivity=target,
                    max_false_urgent=max_false)
    assert fit.tiers is not None and set(fit.tiers) == {"urgent", "normal"} and fit.n_studies == 500
    achieved = {(r.tier, r.group): r for r in fit.achieved}
    assert achieved[("normal", "all studies")].sensitivity >= target
    assert achieved[("urgent", "all studies")].specificity >= 1 - max_false
    assert {g for _, g in achieved} == {"all studies", "adult", "child"}
    # the stats written into the site file are those of the whole decision, recomputed here from scratch
    site = load_site(write_site(tmp_path / "site.toml", SiteCalibration(
        man.name, man.version, man.sha256, "platt", target, {}, study=fit.tiers)), manifest=man)
    prios = [decide_priority(st.scores, manifest=man, policy=policy, site=site, population=st.population).priority
             for st in studies]
    normal = tier_result("normal", "all studies", ((p, st.truth["abnormal"]) for p, st in zip(prios, studies, strict=True)))
    assert site.study["normal"].stats["all studies"] == normal.to_json()
    assert site.study["normal"].thresholds == {"all": fit.tiers["normal"].thresholds["all"]}


def test_fit_study_without_abnormal_studies_fits_nothing_and_says_why(tmp_path: Path) -> None:
    man = load_manifest(make_study_classifier(tmp_path / "m"))
    studies = [st for st in _studies(100, 3, "adult") if st.truth["abnormal"] == 0]
    fit = fit_study(studies, manifest=man, policy=load_policy(),
                    site=SiteCalibration(man.name, man.version, man.sha256, "platt", 0.95, {}),
                    target_sensitivity=0.95, max_false_urgent=0.05)
    assert fit.tiers is None and any("no abnormal study" in w for w in fit.warnings)


def test_fit_study_counts_findings_the_model_has_no_label_for_as_abnormal(tmp_path: Path) -> None:
    """Studies whose only finding is a labels column the model has no label for (pneumothorax) are abnormal: the
    normal threshold must keep the target sensitivity over them too. Before, they were normal studies, and the
    threshold was set on the others alone (most of these low-scoring pneumothoraces would be called normal)."""
    man = load_manifest(make_study_classifier(tmp_path / "m"))
    assert "pneumothorax" not in man.labels
    rng = np.random.default_rng(5)
    pneumothorax = [_Study({lab: float(rng.uniform(0, 0.2)) for lab in STUDY_LABELS},
                           {"pneumonia": 0.0, "effusion": 0.0, "pneumothorax": 1.0}, "adult") for _ in range(30)]
    studies = _studies(300, 1, "adult") + pneumothorax
    n_abnormal = sum(st.truth.get("abnormal") == 1 for st in studies)
    fit = fit_study(studies, manifest=man, policy=load_policy(),
                    site=SiteCalibration(man.name, man.version, man.sha256, "platt", 0.95, {}),
                    target_sensitivity=0.95, max_false_urgent=0.05)
    assert fit.tiers is not None
    normal = next(r for r in fit.achieved if r.tier == "normal" and r.group == "all studies")
    assert normal.n_pos == n_abnormal + 30 and normal.sensitivity >= 0.95
    called_normal = [decide_priority(st.scores, manifest=man, policy=load_policy(), site=dataclasses.replace(
        SiteCalibration(man.name, man.version, man.sha256, "platt", 0.95, {}), study=fit.tiers),
        population="adult").priority is P.NORMAL for st in pneumothorax]
    assert sum(called_normal) <= normal.n_pos - normal.true_pos  # each one called normal is among the counted misses


def test_study_thresholds_for_every_population_from_one_population_say_so(tmp_path: Path) -> None:
    """An audit fitted the site file on children's studies: its 'all' thresholds then called 19 of 35 abnormal adult
    studies normal. Calibrate says where the thresholds come from and how to keep them to that population."""
    man = load_manifest(make_study_classifier(tmp_path / "m"))
    assert len(man.populations) > 1
    base = SiteCalibration(man.name, man.version, man.sha256, "platt", 0.95, {})
    one = _studies(200, 4, "child") + _studies(20, 5, "unknown")
    fit = fit_study(one, manifest=man, policy=load_policy(), site=base, target_sensitivity=0.95, max_false_urgent=0.05)
    said = [w for w in fit.warnings if "every labelled study of known population is child" in w]
    assert len(said) == 1 and "pass --population child" in said[0]
    for studies, population in ((one, "child"), (_studies(200, 4, "child") + _studies(200, 6, "adult"), "all")):
        fit = fit_study(studies, manifest=man, policy=load_policy(), site=base, target_sensitivity=0.95,
                        max_false_urgent=0.05, population=population)
        assert not any("every labelled study" in w for w in fit.warnings)
