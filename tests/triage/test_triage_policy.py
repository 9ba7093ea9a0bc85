"""Triage policy: loading and validation, and decide_priority's rules (normal, routine, urgent, critical, not_assessed)."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pytest
from factories import make_tiny_classifier

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.model.manifest import LabelThresholds, ModelManifest, OperatingPoint, load_manifest
from cxrtriage.results import ImageRecord, Status
from cxrtriage.triage import (
    LabelSiteCalibration,
    Priority,
    SiteCalibration,
    ThresholdKind,
    check_policy,
    decide_priority,
    has_operating_points,
    load_policy,
    scores_only_reason,
    triage_record,
)
from cxrtriage.triage.policy import default_policy_text, format_pair, parse_policy

LABELS = ("abnormal", "pneumothorax", "effusion", "nodule", "no_finding")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> ModelManifest:
    """Tiny model whose labels cover a critical, an urgent, a routine, a summary and an ignored label.

    Thresholds differ per label so that a wrong lookup cannot pass by accident.
    """
    folder = tmp_path_factory.mktemp("model")
    man = load_manifest(make_tiny_classifier(folder, labels=LABELS))
    thr = {
        "abnormal": (0.30, 0.60),
        "pneumothorax": (0.10, 0.41),
        "effusion": (0.20, 0.50),
        "nodule": (0.25, 0.70),
        "no_finding": (0.20, 0.50),
    }
    return dataclasses.replace(man, thresholds={
        lab: LabelThresholds(OperatingPoint(ro, 0.95), OperatingPoint(ba, 0.8)) for lab, (ro, ba) in thr.items()
    })


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policy()


def scores(**kw: float) -> dict[str, float]:
    base = dict.fromkeys(LABELS, 0.01)
    base.update(kw)
    return base


def test_normal_only_when_every_finding_is_below_rule_out(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    d = decide_priority(scores(), manifest=manifest, policy=policy)
    assert d.priority is Priority.NORMAL
    assert d.threshold_kind is ThresholdKind.RULE_OUT
    assert "below their rule-out thresholds" in d.reason
    # One routine finding just at its rule-out threshold (>= counts as above) is enough to lose "normal".
    d = decide_priority(scores(nodule=0.25), manifest=manifest, policy=policy)
    assert d.priority is Priority.ROUTINE
    assert (d.deciding_label, d.threshold) == ("nodule", 0.25)
    assert d.reason.startswith("nodule 0.25 >= 0.25 (rule_out)")
    # Just below it is normal again.
    assert decide_priority(scores(nodule=0.2499), manifest=manifest, policy=policy).priority is Priority.NORMAL


def test_urgent_finding_between_rule_out_and_balanced_is_routine(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    d = decide_priority(scores(effusion=0.3), manifest=manifest, policy=policy)
    assert d.priority is Priority.ROUTINE and d.deciding_label == "effusion"
    d = decide_priority(scores(effusion=0.5), manifest=manifest, policy=policy)
    assert d.priority is Priority.URGENT
    assert d.reason == "effusion 0.50 >= 0.50 (balanced)"
    assert (d.deciding_score, d.threshold, d.threshold_kind, d.threshold_source) == (0.5, 0.5, ThresholdKind.BALANCED, "model")


def test_critical_beats_urgent_even_with_a_lower_score(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    d = decide_priority(scores(pneumothorax=0.83, effusion=0.99, nodule=0.99), manifest=manifest, policy=policy)
    assert d.priority is Priority.CRITICAL
    assert d.deciding_label == "pneumothorax"
    assert d.reason == "pneumothorax 0.83 >= 0.41 (balanced)"


def test_summary_label_counts_for_routine_but_never_urgent(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    d = decide_priority(scores(abnormal=0.99), manifest=manifest, policy=policy)
    assert d.priority is Priority.ROUTINE and d.deciding_label == "abnormal"
    assert decide_priority(scores(abnormal=0.29), manifest=manifest, policy=policy).priority is Priority.NORMAL


def test_ignored_inverse_label_plays_no_part(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    assert decide_priority(scores(no_finding=0.99), manifest=manifest, policy=policy).priority is Priority.NORMAL
    # ...and need not even be scored.
    s = scores()
    del s["no_finding"]
    assert decide_priority(s, manifest=manifest, policy=policy).priority is Priority.NORMAL


@pytest.mark.parametrize("bad", [math.nan, None, "", "x"])
def test_missing_or_invalid_score_is_not_assessed(manifest: ModelManifest, policy, bad: object) -> None:  # type: ignore[no-untyped-def]
    s: dict[str, object] = dict(scores(pneumothorax=0.99))
    s["effusion"] = bad
    d = decide_priority(s, manifest=manifest, policy=policy)  # type: ignore[arg-type]
    assert d.priority is Priority.NOT_ASSESSED
    assert "effusion" in d.reason


def test_per_label_threshold_override(manifest: ModelManifest) -> None:
    pol = parse_policy({
        "schema_version": 1, "name": "sensitive-ptx",
        "levels": {"critical": {"findings": ["Pneumothorax"], "threshold": "balanced"}},
        "thresholds": {"pneumothorax": "rule_out"},
    }, source="test")
    d = decide_priority(scores(pneumothorax=0.2), manifest=manifest, policy=pol)
    assert d.priority is Priority.CRITICAL
    assert d.reason == "pneumothorax 0.20 >= 0.10 (rule_out)"


def _site(manifest: ModelManifest, **overrides: object) -> SiteCalibration:
    fields = {"model_name": manifest.name, "model_version": manifest.version, "model_sha256": manifest.sha256}
    fields.update(overrides)  # type: ignore[arg-type]
    return SiteCalibration(
        method="platt", target_sensitivity=0.95,
        labels={"pneumothorax": LabelSiteCalibration("pneumothorax", "platt", rule_out=0.3, balanced=0.9, a=1.0, b=0.0)},
        **fields,  # type: ignore[arg-type]
    )


def test_site_thresholds_override_the_manifest(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    site = _site(manifest)
    # 0.83 is critical with the model's 0.41 but only routine at the site's balanced 0.9 (rule-out 0.3).
    d = decide_priority(scores(pneumothorax=0.83), manifest=manifest, policy=policy, site=site)
    assert d.priority is Priority.ROUTINE
    assert d.reason.startswith("pneumothorax 0.83 >= 0.30 (site rule_out)")
    d = decide_priority(scores(pneumothorax=0.95), manifest=manifest, policy=policy, site=site)
    assert (d.priority, d.threshold, d.threshold_source) == (Priority.CRITICAL, 0.9, "site")
    assert d.reason == "pneumothorax 0.95 >= 0.90 (site balanced)"
    # A label the site did not calibrate keeps the manifest threshold.
    d = decide_priority(scores(effusion=0.5), manifest=manifest, policy=policy, site=site)
    assert (d.priority, d.threshold_source) == (Priority.URGENT, "model")
    # The site's rule-out 0.3 also governs "normal": 0.2 is below it (the model's 0.10 would not be).
    assert decide_priority(scores(pneumothorax=0.2), manifest=manifest, policy=policy, site=site).priority is Priority.NORMAL


@pytest.mark.parametrize("field", ["model_version", "model_sha256", "model_name"])
def test_site_for_another_model_is_refused(manifest: ModelManifest, policy, field: str) -> None:  # type: ignore[no-untyped-def]
    site = _site(manifest, **{field: "0" * 64 if field == "model_sha256" else "other"})
    with pytest.raises(ConfigError, match="re-run `cxrtriage calibrate`"):
        decide_priority(scores(), manifest=manifest, policy=policy, site=site)


def test_label_without_thresholds_is_a_model_error(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    man = dataclasses.replace(manifest, thresholds={k: v for k, v in manifest.thresholds.items() if k != "nodule"})
    with pytest.raises(ModelError, match="no thresholds for label 'nodule'"):
        decide_priority(scores(), manifest=man, policy=policy)


def test_model_without_any_operating_points_decides_nothing(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    """A model imported without operating points: every scored image is not_assessed with the next step named (no
    error: validate and calibrate need its scores); a site file that gives some makes it a partial model again."""
    bare = dataclasses.replace(manifest, thresholds={}, study=None)
    assert not has_operating_points(bare) and has_operating_points(manifest)
    check_policy(policy, bare)  # nothing to check: nothing will be decided
    d = decide_priority(scores(pneumothorax=0.99), manifest=bare, policy=policy)
    assert d.priority is Priority.NOT_ASSESSED and d.deciding_label is None
    assert d.reason == scores_only_reason(bare) and "cxrtriage models validate" in d.reason
    out = triage_record(ImageRecord("a.dcm", Status.SCORED, scores=scores(pneumothorax=0.99)), manifest=bare,
                        policy=policy)
    assert out.priority is Priority.NOT_ASSESSED and "no operating points yet" in (out.priority_reason or "")
    site = _site(bare)
    assert has_operating_points(bare, site)
    with pytest.raises(ModelError, match="no rule_out/balanced thresholds for label 'abnormal'.*models validate"):
        check_policy(policy, bare, site)


def test_triage_record_fills_priority_fields(manifest: ModelManifest, policy) -> None:  # type: ignore[no-untyped-def]
    record = ImageRecord("a.dcm", Status.SCORED, scores={**scores(), "pneumothorax": 0.83})
    out = triage_record(record, manifest=manifest, policy=policy)
    assert out.priority is Priority.CRITICAL
    assert out.priority_reason == "pneumothorax 0.83 >= 0.41 (balanced)"
    assert (out.priority_finding, out.priority_score) == ("pneumothorax", 0.83)
    assert record.priority is None  # the input record is not modified
    excluded = triage_record(ImageRecord("lat.dcm", Status.EXCLUDED, reason="lateral view (ViewPosition LL)"),
                             manifest=manifest, policy=policy)
    assert excluded.priority is Priority.NOT_ASSESSED
    assert excluded.priority_reason == "excluded: lateral view (ViewPosition LL)"
    failed = triage_record(ImageRecord("x.dcm", Status.FAILED), manifest=manifest, policy=policy)
    assert (failed.priority, failed.priority_reason) == (Priority.NOT_ASSESSED, "failed")


def test_default_policy_is_packaged_and_documented(repo_root: Path) -> None:
    pol = load_policy()
    assert pol.name == "default"
    assert [lv.priority for lv in pol.levels] == [Priority.CRITICAL, Priority.URGENT]
    assert pol.levels[0].findings == ("pneumothorax",)
    assert set(pol.levels[1].findings) == {"effusion", "consolidation", "pneumonia", "edema", "mass"}
    assert pol.summary_labels == ("abnormal",)
    doc = (repo_root / "docs" / "triage.md").read_text(encoding="utf-8")
    for finding in (*pol.levels[0].findings, *pol.levels[1].findings, *pol.summary_labels):
        assert finding in doc


def test_labels_missing_from_the_model_warn_at_load_for_a_chosen_policy(tmp_path: Path,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    chosen = tmp_path / "site_policy.toml"
    chosen.write_text(default_policy_text())
    with caplog.at_level(logging.INFO, logger="cxrtriage.triage.policy"):
        load_policy(chosen, labels=["Pneumothorax", "Effusion", "Pneumonia"])
    [record] = caplog.records  # one line, naming the file and the labels
    assert record.levelno == logging.WARNING and "\n" not in record.getMessage()
    assert f"({chosen}): consolidation, edema, mass, abnormal not among the model's labels" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cxrtriage.triage.policy"):
        load_policy(chosen, labels=["pneumothorax", "effusion", "consolidation", "pneumonia", "edema", "mass",
                                    "abnormal"])
    assert caplog.text == ""


def test_the_packaged_policy_names_labels_a_model_lacks_at_info_level(caplog: pytest.LogCaptureFixture) -> None:
    # It is written for every model (the shipped classifier has no pneumothorax or edema): no warning on every run
    # of `evaluate` or `calibrate` with the shipped model; what matters for safety, a level no label reaches, the
    # commands say themselves (predict's coverage notes, evaluate's warnings)
    with caplog.at_level(logging.INFO, logger="cxrtriage.triage.policy"):
        load_policy(labels=["Effusion", "Pneumonia"])
    [record] = caplog.records
    assert record.levelno == logging.INFO and "pneumothorax" in record.getMessage()


@pytest.mark.parametrize(("text", "match"), [
    ('schema_version = 2', "schema_version must be 1"),
    ('schema_version = 1\ncolour = "red"', r"unknown key\(s\) \['colour'\]"),
    ('schema_version = 1\n[levels.routine]\nfindings = ["nodule"]\nthreshold = "rule_out"', "cannot be configured"),
    ('schema_version = 1\n[levels.urgent]\nfindings = ["effusion"]\nthreshold = "high"', "threshold must be one of"),
    ('schema_version = 1\n[levels.urgent]\nfindings = ["effusion"]', "'threshold' is missing"),
    ('schema_version = 1\n[levels.critical]\nfindings = ["effusion"]\nthreshold = "balanced"\n'
     '[levels.urgent]\nfindings = ["Effusion"]\nthreshold = "balanced"', "already listed under"),
    ('schema_version = 1\n[levels.urgent]\nfindings = ["abnormal"]\nthreshold = "balanced"\n[labels]\nsummary = ["abnormal"]',
     "summary label"),
    ('schema_version = 1\n[levels.urgent]\nfindings = "effusion"\nthreshold = "balanced"', "must be a list"),
    ('schema_version = 1\nname = [', "not valid TOML"),
])
def test_invalid_policy_files_are_refused(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "policy.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_policy(p)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="policy file not found"):
        load_policy(tmp_path / "nope.toml")


def test_format_pair_never_prints_equal_numbers_for_different_values() -> None:
    assert format_pair(0.4099, 0.41) == ("0.4099", "0.4100")
    assert format_pair(0.83, 0.41) == ("0.83", "0.41")
    assert format_pair(0.5, 0.5) == ("0.50", "0.50")
