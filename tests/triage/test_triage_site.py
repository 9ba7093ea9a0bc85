"""Site files: TOML round trip, apply_site, and refusal of files made for another model or malformed."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from factories import make_tiny_classifier

from cxrtriage.errors import ConfigError, OutputError
from cxrtriage.model.manifest import ModelManifest, load_manifest
from cxrtriage.triage import LabelSiteCalibration, SiteCalibration, apply_site, dump_site, load_site, write_site
from cxrtriage.triage.site import site_for_results


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> ModelManifest:
    return load_manifest(make_tiny_classifier(tmp_path_factory.mktemp("m")))


def make_site(manifest: ModelManifest) -> SiteCalibration:
    return SiteCalibration(
        model_name=manifest.name, model_version=manifest.version, model_sha256=manifest.sha256,
        method="platt", target_sensitivity=0.95, created="2026-01-01T00:00:00+00:00",
        source={"labels": "site labels.csv", "matched_scored": 120},
        labels={
            "pneumonia": LabelSiteCalibration(
                "pneumonia", "platt", rule_out=0.123456789012345, balanced=0.5, a=1.7, b=-0.3, n=120, n_positive=40,
                stats={"auroc": 0.81, "rule_out_sensitivity_ci95": [0.8, 0.99]}),
            "effusion": LabelSiteCalibration(
                "effusion", "isotonic", rule_out=0.1, balanced=0.4, x=tuple(np.linspace(0, 1, 20)),
                y=tuple(np.linspace(0, 1, 20) ** 2), n=120, n_positive=30),
        },
    )


def test_round_trip_is_exact(tmp_path: Path, manifest: ModelManifest) -> None:
    site = make_site(manifest)
    path = write_site(tmp_path / "site.toml", site)
    back = load_site(path, manifest=manifest)
    assert dataclasses.replace(back, path=None) == site
    assert back.path == path.resolve()
    assert "cxrtriage predict --site" in path.read_text()


def test_a_site_file_whose_rule_out_is_above_balanced_is_said(tmp_path: Path, manifest: ModelManifest,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    site = make_site(manifest)
    path = write_site(tmp_path / "site.toml", site)
    with caplog.at_level("WARNING", logger="cxrtriage.triage.site"):
        load_site(path)
    assert "rule-out threshold is above" not in caplog.text
    old = dataclasses.replace(site, labels={**site.labels, "pneumonia": dataclasses.replace(
        site.labels["pneumonia"], rule_out=0.75)})  # as calibrate made them before rule-out was capped at balanced
    path = write_site(tmp_path / "old.toml", old)
    with caplog.at_level("WARNING", logger="cxrtriage.triage.site"):
        assert load_site(path, manifest=manifest).labels["pneumonia"].rule_out == 0.75  # still used, as written
    assert "rule-out threshold is above the balanced one (less sensitive) for pneumonia" in caplog.text
    assert "calibrate the site file again" in caplog.text


def test_apply_site_maps_only_calibrated_labels(manifest: ModelManifest) -> None:
    site = make_site(manifest)
    out = apply_site({"abnormal": 0.3, "pneumonia": 0.3, "effusion": 0.5, "extra": 0.9}, site)
    assert out["abnormal"] == 0.3 and out["extra"] == 0.9
    z = math.log(0.3 / 0.7)
    assert out["pneumonia"] == pytest.approx(1 / (1 + math.exp(-(1.7 * z - 0.3))), abs=1e-12)
    assert out["effusion"] == pytest.approx(0.25, abs=2e-3)  # interpolated on y = x^2
    assert math.isnan(apply_site({"pneumonia": math.nan}, site)["pneumonia"])
    assert apply_site({"pneumonia": 0.3}, None) == {"pneumonia": 0.3}


def test_site_maps_are_monotone(manifest: ModelManifest) -> None:
    p = np.linspace(0, 1, 501)
    for cal in make_site(manifest).labels.values():
        assert np.all(np.diff(cal.apply(p)) >= 0)


@pytest.mark.parametrize("field", ["name", "version", "sha256"])
def test_site_file_for_another_model_version_is_refused(tmp_path: Path, manifest: ModelManifest, field: str) -> None:
    site = make_site(manifest)
    other = {"name": {"model_name": "other-model"}, "version": {"model_version": "9.9.9"},
             "sha256": {"model_sha256": "ab" * 32}}[field]
    path = write_site(tmp_path / "site.toml", dataclasses.replace(site, **other))  # type: ignore[arg-type]
    load_site(path)  # readable on its own...
    with pytest.raises(ConfigError, match="was made for model .* but the model in use is"):
        load_site(path, manifest=manifest)  # ...but not for this model


def test_site_naming_unknown_label_is_refused(tmp_path: Path, manifest: ModelManifest) -> None:
    site = make_site(manifest)
    labels = dict(site.labels) | {"cardiomegaly": dataclasses.replace(site.labels["pneumonia"], label="cardiomegaly")}
    path = write_site(tmp_path / "site.toml", dataclasses.replace(site, labels=labels))
    with pytest.raises(ConfigError, match=r"\['cardiomegaly'\] are not labels of model"):
        load_site(path, manifest=manifest)


@pytest.mark.parametrize(("edit", "match"), [
    (lambda t: t.replace("schema_version = 2", "schema_version = 7"), "schema_version 7 is not supported"),
    (lambda t: t.replace('"a" = 1.7', '"a" = -1.7'), "platt needs finite a > 0"),
    (lambda t: t.replace('"rule_out" = 0.1\n', ""), "field 'rule_out' is missing"),
    (lambda t: t.replace('"method" = "platt"', '"method" = "magic"'), "method must be one of"),
    (lambda t: t + "\n[oops", "not valid TOML"),
])
def test_malformed_site_files(tmp_path: Path, manifest: ModelManifest, edit, match: str) -> None:  # type: ignore[no-untyped-def]
    text = edit(dump_site(make_site(manifest)))
    path = tmp_path / "site.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_site(path)


def test_missing_site_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="site file not found"):
        load_site(tmp_path / "none.toml")


def test_write_site_is_atomic(tmp_path: Path, manifest: ModelManifest, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_site(tmp_path / "sub" / "site.toml", make_site(manifest))
    before = path.read_text()
    assert [p.name for p in path.parent.iterdir()] == ["site.toml"]  # no partial file left behind

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", fail)
    with pytest.raises(OutputError, match="site.toml: cannot write"):
        write_site(path, dataclasses.replace(make_site(manifest), method="isotonic"))
    assert path.read_text() == before and [p.name for p in path.parent.iterdir()] == ["site.toml"]


def test_site_for_results_finds_the_recorded_file(tmp_path: Path, manifest: ModelManifest) -> None:
    results = tmp_path / "run" / "results.csv"
    results.parent.mkdir()
    write_site(tmp_path / "run" / "site.toml", make_site(manifest))
    assert site_for_results(["", None], results=results, manifest=manifest) is None
    # A relative path recorded at predict time is also looked up beside the results, then by its name.
    for recorded in ("run/site.toml", "elsewhere/site.toml"):
        site = site_for_results([recorded, recorded, ""], results=results, manifest=manifest)
        assert site is not None and site.path == (tmp_path / "run" / "site.toml").resolve()
    moved = write_site(tmp_path / "moved.toml", make_site(manifest))
    site = site_for_results(["/gone/site.toml"], moved, results=results, manifest=manifest)
    assert site is not None and site.path == moved.resolve()


def test_site_for_results_refusals(tmp_path: Path, manifest: ModelManifest) -> None:
    results = tmp_path / "results.csv"
    site_path = write_site(tmp_path / "site.toml", make_site(manifest))
    with pytest.raises(ConfigError, match="several site files .* evaluate them separately"):
        site_for_results(["a.toml", "b.toml"], results=results, manifest=manifest)
    with pytest.raises(ConfigError, match="site file '/gone/old.toml', which is not found.*pass --site PATH"):
        site_for_results(["/gone/old.toml"], results=results, manifest=manifest)
    with pytest.raises(ConfigError, match="scored without a site file.*drop --site here"):
        site_for_results([], site_path, results=results, manifest=manifest)
    other = load_manifest(make_tiny_classifier(tmp_path / "other", seed=5))
    with pytest.raises(ConfigError, match="made for model"):
        site_for_results([str(site_path)], results=results, manifest=other)


def test_labels_without_a_calibration_are_named_and_the_study_thresholds_said_to_apply(
        tmp_path: Path, manifest: ModelManifest, caplog: pytest.LogCaptureFixture) -> None:
    """The note read as if the site file did nothing for those labels, while its study thresholds decided them."""
    from cxrtriage.triage.site import SiteStudyTier

    site = make_site(manifest)  # pneumonia and effusion: the tiny model's 'abnormal' has no calibration
    with caplog.at_level("WARNING", logger="cxrtriage.triage.site"):
        load_site(write_site(tmp_path / "labels.toml", site), manifest=manifest)
    assert "no site calibration for abnormal; those labels keep the model's scores and per-label thresholds" in caplog.text
    assert "study-level" not in caplog.text
    caplog.clear()
    tiers = dataclasses.replace(site, study={"normal": SiteStudyTier("normal", {"all": 0.3})})
    with caplog.at_level("WARNING", logger="cxrtriage.triage.site"):
        load_site(write_site(tmp_path / "tiers.toml", tiers), manifest=manifest)
    assert "per-label thresholds (the site file's study-level thresholds still apply to them)" in caplog.text
