"""Study-level triage: tiers decided on the study score per population, only validated labels decide, the row says
when the patient's age puts a label outside its validated population, and a study is decided on its images' highest
scores (the worklist)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import numpy as np
import pytest
from factories import STUDY_LABELS, make_study_classifier, make_tiny_classifier

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.model.manifest import load_manifest
from cxrtriage.pipeline.hooks.triage import TriageHook
from cxrtriage.results import ImageRecord, Priority, Status
from cxrtriage.triage import (
    SiteCalibration,
    SiteStudyTier,
    build_worklist,
    check_policy,
    decide_priority,
    deciding_labels,
    load_policy,
    population_for,
    triage_record,
)
from cxrtriage.triage.policy import parse_policy


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return load_manifest(make_study_classifier(tmp_path_factory.mktemp("study")))


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policy()


def scores(**kw: float) -> dict[str, float]:
    base = dict.fromkeys(STUDY_LABELS, 0.01)
    base.update(kw)
    return base


def decide(manifest, policy, population: str, **kw: float):  # type: ignore[no-untyped-def]
    return decide_priority(scores(**kw), manifest=manifest, policy=policy, population=population)


def test_normal_routine_and_urgent_on_the_population_thresholds(manifest, policy) -> None:  # type: ignore[no-untyped-def]
    # adult: normal below 0.5, urgent at 0.4 for pneumonia/effusion
    d = decide(manifest, policy, "adult", abnormal=0.49)
    assert (d.priority, d.tier, d.population, d.threshold) == (Priority.NORMAL, "normal", "adult", 0.5)
    assert d.reason == "all 3 deciding labels below the study normal threshold 0.50 (adult); highest: abnormal 0.49"
    d = decide(manifest, policy, "adult", abnormal=0.5)  # at the threshold is not ruled out
    assert d.priority is Priority.ROUTINE and d.reason.startswith("abnormal 0.50 >= 0.50 (study normal, adult)")
    d = decide(manifest, policy, "adult", effusion=0.41, pneumonia=0.45)
    assert (d.priority, d.deciding_label, d.tier) == (Priority.URGENT, "pneumonia", "urgent")
    assert d.reason == "pneumonia 0.45 >= 0.40 (study urgent, adult); also effusion"
    # child: the same scores are judged on the child thresholds (urgent 0.6, normal 0.8)
    assert decide(manifest, policy, "child", pneumonia=0.45).priority is Priority.NORMAL
    assert decide(manifest, policy, "child", abnormal=0.7).priority is Priority.NORMAL
    assert decide(manifest, policy, "child", pneumonia=0.6).priority is Priority.URGENT


def test_unvalidated_labels_are_reported_but_never_decide(manifest, policy) -> None:  # type: ignore[no-untyped-def]
    # nodule is validated for no population: even a certain nodule neither blocks "normal" nor raises the priority
    assert decide(manifest, policy, "adult", nodule=0.99).priority is Priority.NORMAL
    # effusion is validated for adults only: on a child it does not decide; on an adult it makes the study urgent
    assert decide(manifest, policy, "child", effusion=0.99).priority is Priority.NORMAL
    assert decide(manifest, policy, "adult", effusion=0.99).priority is Priority.URGENT
    assert deciding_labels(manifest, policy, "child") == ["abnormal", "pneumonia"]
    assert deciding_labels(manifest, policy, "adult") == ["abnormal", "pneumonia", "effusion"]


def test_a_policy_can_let_an_unvalidated_label_decide_explicitly(manifest) -> None:  # type: ignore[no-untyped-def]
    pol = parse_policy({"schema_version": 1, "name": "nodule-counts",
                        "levels": {"urgent": {"findings": ["pneumonia", "effusion"], "threshold": "balanced"}},
                        "labels": {"summary": ["abnormal"], "ignore": ["no_finding"], "decide_unvalidated": ["nodule"]}},
                       source="test")
    d = decide_priority(scores(nodule=0.6), manifest=manifest, policy=pol, population="adult")
    assert (d.priority, d.deciding_label) == (Priority.ROUTINE, "nodule")
    with pytest.raises(ConfigError, match="ignore and decide_unvalidated"):
        parse_policy({"schema_version": 1, "labels": {"ignore": ["nodule"], "decide_unvalidated": ["nodule"]}},
                     source="test")


def test_unknown_population_takes_the_most_cautious_rules(manifest, policy) -> None:  # type: ignore[no-untyped-def]
    # labels validated for ANY population decide (effusion: adults), and each tier takes its lowest threshold
    assert deciding_labels(manifest, policy, "unknown") == ["abnormal", "pneumonia", "effusion"]
    d = decide(manifest, policy, "unknown", pneumonia=0.45)
    assert (d.priority, d.threshold, d.population) == (Priority.URGENT, 0.4, "unknown")
    assert decide(manifest, policy, "unknown", abnormal=0.6).priority is Priority.ROUTINE  # 0.5, not the child's 0.8
    assert decide(manifest, policy, "unknown", effusion=0.45).priority is Priority.URGENT
    # a manifest with populations and no population given is "unknown", never a guess
    assert decide_priority(scores(pneumonia=0.45), manifest=manifest, policy=policy).population == "unknown"


@pytest.mark.parametrize(("age", "default", "expected", "note"), [
    (4.0, None, "child", ""),
    (4.0, "adult", "child", ""),  # an age in DICOM always wins over --population
    (61.0, None, "adult", ""),
    (10.0, "child", "unknown", "outside every population"),  # a 10-year-old is neither: cautious rules
    (0.5, None, "unknown", "6 months (DICOM) is outside"),
    (None, "child", "child", ""),
    (None, None, "unknown", ""),
])
def test_population_for(manifest, age: float | None, default: str | None, expected: str, note: str) -> None:  # type: ignore[no-untyped-def]
    pop, why = population_for(manifest, age, default)
    assert pop == expected
    assert (note in why) if note else why == ""


def test_the_row_says_when_the_age_puts_labels_outside_their_population(manifest, policy) -> None:  # type: ignore[no-untyped-def]
    rec = ImageRecord(path="child.dcm", status=Status.SCORED, reason="CR CHEST PA", patient_age=4.0,
                      scores=scores(effusion=0.99, nodule=0.99))
    out = triage_record(rec, manifest=manifest, policy=policy)
    assert (out.priority, out.population) == (Priority.NORMAL, "child")
    assert out.reason == ("CR CHEST PA; patient age 4 years (DICOM): child population, for which these are not "
                          "validated, so reported but not deciding the priority: effusion, nodule")
    # triaging again (evaluate --policy) does not repeat the note
    assert triage_record(out, manifest=manifest, policy=policy).reason == out.reason
    # the same scores without an age: effusion (validated for adults) may decide, and nothing is noted
    anon = triage_record(dataclasses.replace(rec, patient_age=None), manifest=manifest, policy=policy)
    assert (anon.priority, anon.population, anon.reason) == (Priority.URGENT, "unknown", "CR CHEST PA")
    # --population child for files without an age
    kid = triage_record(dataclasses.replace(rec, patient_age=None), manifest=manifest, policy=policy,
                        default_population="child")
    assert (kid.priority, kid.population) == (Priority.NORMAL, "child")
    old = triage_record(dataclasses.replace(rec, patient_age=93.0), manifest=manifest, policy=policy)
    assert "patient age 90+ years (DICOM): adult population" in (old.reason or "")


def test_a_study_takes_the_decision_on_its_images_highest_scores(manifest, policy) -> None:  # type: ignore[no-untyped-def]
    """The worklist gives each study the highest priority of its images; with study scores that are the highest over
    the images, that is exactly the decision on the study's scores, whatever they are."""
    rng = np.random.default_rng(0)
    levels = (0.005, 0.3, 0.45, 0.55, 0.7, 0.9)
    records: list[ImageRecord] = []
    studies: dict[str, list[dict[str, float]]] = {}
    for k, pop in itertools.product(range(60), ("adult", "child", "unknown")):
        key = f"{pop}-{k}"
        for i in range(int(rng.integers(1, 4))):
            s = {lab: float(rng.choice(levels)) for lab in STUDY_LABELS}
            studies.setdefault(key, []).append(s)
            rec = ImageRecord(path=f"{key}/{i}.dcm", status=Status.SCORED, study_key=key, scores=s)
            records.append(triage_record(rec, manifest=manifest, policy=policy, default_population=pop))
    entries = {e.study_key: e for e in build_worklist(records)}
    for key, images in studies.items():
        study_scores = {lab: max(s[lab] for s in images) for lab in STUDY_LABELS}
        expected = decide_priority(study_scores, manifest=manifest, policy=policy, population=key.split("-")[0])
        assert entries[key].priority is expected.priority, key


def test_check_policy_needs_a_threshold_for_every_tier_it_uses(tmp_path: Path, manifest, policy) -> None:  # type: ignore[no-untyped-def]
    check_policy(policy, manifest)
    assert manifest.study is not None
    no_urgent = dataclasses.replace(manifest, study=dataclasses.replace(
        manifest.study, tiers={"normal": manifest.study.tiers["normal"]}))
    with pytest.raises(ModelError, match="no study-level operating point for tier 'urgent'"):
        check_policy(policy, no_urgent)
    # a site file with a [study] section must give every tier the policy uses
    site = SiteCalibration(manifest.name, manifest.version, manifest.sha256, "platt", 0.95, {},
                           study={"normal": SiteStudyTier("normal", {"all": 0.3})})
    with pytest.raises(ConfigError, match="no study-level threshold for tier 'urgent'"):
        check_policy(policy, manifest, site)


def test_site_study_thresholds_replace_the_manifest_ones(manifest, policy) -> None:  # type: ignore[no-untyped-def]
    site = SiteCalibration(manifest.name, manifest.version, manifest.sha256, "platt", 0.95, {}, study={
        "normal": SiteStudyTier("normal", {"all": 0.3}), "urgent": SiteStudyTier("urgent", {"adult": 0.2, "child": 0.9})})
    d = decide_priority(scores(abnormal=0.35), manifest=manifest, policy=policy, site=site, population="child")
    assert (d.priority, d.threshold, d.threshold_source) == (Priority.ROUTINE, 0.3, "site")
    assert "(site study normal, child)" in d.reason
    d = decide_priority(scores(pneumonia=0.25), manifest=manifest, policy=policy, site=site, population="unknown")
    assert (d.priority, d.threshold) == (Priority.URGENT, 0.2)  # no 'unknown' or 'all': the lowest one
    # a schema-1 site file (per-label thresholds only) keeps the per-label rules
    v1 = dataclasses.replace(site, study={}, schema_version=1)
    d = decide_priority(scores(effusion=0.45), manifest=manifest, policy=policy, site=v1, population="adult")
    assert d.tier is None and d.threshold_kind is not None


def test_population_option_is_checked_against_the_model(tmp_path: Path, manifest, policy) -> None:  # type: ignore[no-untyped-def]
    assert TriageHook(policy, manifest, population="child").population == "child"
    with pytest.raises(ConfigError, match="has populations"):
        TriageHook(policy, manifest, population="elderly")
    plain = load_manifest(make_tiny_classifier(tmp_path / "plain"))
    with pytest.raises(ConfigError, match="defines no populations"):
        TriageHook(policy, plain, population="child")


def test_run_json_states_the_operating_points_and_the_labels_that_decide(manifest, policy) -> None:  # type: ignore[no-untyped-def]
    hook = TriageHook(policy, manifest, population="adult")
    prov = hook.provenance()["study_operating_points"]
    assert prov["mode"] == "study" and prov["default_population"] == "adult"
    assert prov["deciding_labels"]["child"] == ["abnormal", "pneumonia"]
    assert prov["not_deciding_labels"]["adult"] == ["nodule"]
    assert prov["tiers"]["urgent"]["thresholds"] == {"child": 0.6, "adult": 0.4, "unknown": 0.4}
    assert prov["tiers"]["urgent"]["held_out_test"]["adult"]["sensitivity"] == 0.8


def test_an_old_per_label_site_file_keeps_working(tmp_path: Path, manifest, policy) -> None:  # type: ignore[no-untyped-def]
    """A site file written before study-level thresholds (schema 1, no [study]) loads, and its per-label thresholds
    decide as they did; run.json says so."""
    from cxrtriage.triage import LabelSiteCalibration, dump_site, load_site

    new = SiteCalibration(manifest.name, manifest.version, manifest.sha256, "platt", 0.95, {
        "effusion": LabelSiteCalibration("effusion", "platt", rule_out=0.1, balanced=0.3, a=1.0, b=0.0)})
    text = dump_site(new)
    assert "schema_version = 2" in text and "[study" not in text
    old = tmp_path / "old-site.toml"
    old.write_text(text.replace("schema_version = 2", "schema_version = 1"))
    site = load_site(old, manifest=manifest)
    assert site.schema_version == 1 and site.study == {}
    d = decide_priority(scores(effusion=0.35), manifest=manifest, policy=policy, site=site, population="adult")
    assert (d.priority, d.threshold, d.threshold_source, d.tier) == (Priority.URGENT, 0.3, "site", None)
    notes = TriageHook(policy, manifest, site).provenance()["notes"]
    assert any("per-label thresholds only (schema 1): the per-label rules decide" in n for n in notes)
