"""predict with the stages wired in: triage (policy, site), quality checks, lungs, run.json, worklist, reports."""

from __future__ import annotations

import csv
import json
import math
from html import unescape
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from factories import edit_manifest, make_tiny_classifier, make_tiny_segmenter, read_jsonl, write_dicom

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.io import read_image
from cxrtriage.measure.quality import assess_quality
from cxrtriage.model import Classifier, LungMask, load_classifier
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.base import PredictHook, ReportOutcome
from cxrtriage.pipeline.hooks.triage import TriageOutcome
from cxrtriage.pipeline.predict import build_hooks, run_predict
from cxrtriage.report import batch as report_batch
from cxrtriage.results import ImageRecord, from_row, read_results
from cxrtriage.triage import (
    LabelSiteCalibration,
    SiteCalibration,
    apply_site,
    build_worklist,
    load_policy,
    load_site,
    triage_record,
    write_site,
)

LABELS = ("abnormal", "pneumonia", "effusion")


def _ramp_pixels(rows: int, cols: int, seed: int) -> np.ndarray:
    """A radiograph-like 12-bit image: a smooth gradient plus noise (passes the dynamic-range check)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = 800 + 2400 * np.sin(np.pi * xx / cols) * (0.5 + 0.5 * yy / rows)
    return np.clip(base + rng.normal(0, 150, (rows, cols)), 0, 4095).astype(np.uint16)


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    write_dicom(root / "s1" / "pa.dcm", rows=256, cols=240, PixelSpacing=[0.5, 0.5], pixels=_ramp_pixels(256, 240, 1))
    write_dicom(root / "s1" / "lat.dcm", view="LL")
    write_dicom(root / "s2" / "ap.dcm", rows=300, cols=280, view="AP", pixels=_ramp_pixels(300, 280, 2))
    write_dicom(root / "s3" / "small.dcm", rows=60, cols=50)  # fails the size check
    flat = np.full((260, 260), 1000, np.uint16)
    write_dicom(root / "s4" / "flat.dcm", rows=260, cols=260, pixels=flat)  # fails the dynamic-range check
    (root / "s5").mkdir()
    cv2.imwrite(str(root / "s5" / "x.png"), (_ramp_pixels(256, 256, 3) // 16).astype(np.uint8))
    (root / "s5" / "junk.dcm").write_bytes(b"\x00\x01 not an image" * 8)
    return root


@pytest.fixture()
def model(tmp_path: Path) -> Classifier:
    return load_classifier(make_tiny_classifier(tmp_path / "model"), device="cpu")


@pytest.fixture()
def segmenter(tmp_path: Path) -> Path:
    return make_tiny_segmenter(tmp_path / "seg", seed=6)  # seed 6: all three labels occur


def _config(inputs: Path, out: Path, **kw: Any) -> PredictConfig:
    kw.setdefault("workers", 0)
    kw.setdefault("batch_size", 3)
    return PredictConfig(inputs=(inputs,), out_dir=out, **kw)


def _rows(out: Path) -> dict[str, dict[str, Any]]:
    return {Path(r["path"]).name: r for r in read_jsonl(out / "results.jsonl")}


def test_every_row_is_triaged_and_the_worklist_and_run_json_are_written(scans: Path, tmp_path: Path,
                                                                       model: Classifier) -> None:
    out = tmp_path / "out"
    summary = run_predict(_config(scans, out), model=model)
    rows = _rows(out)
    assert set(rows) == {"pa.dcm", "lat.dcm", "ap.dcm", "small.dcm", "flat.dcm", "x.png", "junk.dcm"}
    policy = load_policy(None)
    for name, r in rows.items():
        assert r["priority"] in ("critical", "urgent", "routine", "normal", "not_assessed"), name
        assert r["site_file"] == "" and "model_score_abnormal" not in r
    # unscored rows: not_assessed with their own reason
    assert rows["lat.dcm"]["priority"] == "not_assessed" and rows["lat.dcm"]["priority_reason"].startswith("excluded: lateral")
    assert rows["junk.dcm"]["priority"] == "not_assessed" and rows["junk.dcm"]["priority_reason"].startswith("failed: ")
    # quality failures keep their scores but are not assessed, with the check's reason
    for name, check in (("small.dcm", "image too small: short side 50 px"), ("flat.dcm", "almost no dynamic range")):
        r = rows[name]
        assert r["status"] == "scored" and all(0 <= r[f"score_{lab}"] <= 1 for lab in LABELS)
        assert check in r["quality"] and r["priority"] == "not_assessed"
        assert r["priority_reason"] == f"quality check failed: {r['quality']}" and r["priority_score"] is None
    # rows that passed: exactly what the triage function decides from their scores
    for name in ("pa.dcm", "ap.dcm", "x.png"):
        r = rows[name]
        assert r["quality"] == "ok"
        expected = triage_record(from_row(r), manifest=model.manifest, policy=policy)
        assert (r["priority"], r["priority_reason"], r["priority_finding"]) == (
            expected.priority, expected.priority_reason, expected.priority_finding)
        assert r["priority_score"] == pytest.approx(expected.priority_score)

    # worklist.csv = build_worklist over the rows, one line per study
    with open(out / "worklist.csv", newline="") as f:
        wl = list(csv.DictReader(f))
    entries = build_worklist(read_results(out / "results.jsonl").records)
    assert [(w["study_key"], w["priority"]) for w in wl] == [(e.study_key, e.priority.value) for e in entries]
    assert len(wl) == len({r["study_key"] for r in rows.values()}) and not list(out.glob("*.partial"))

    # run.json: provenance for the report
    run = json.loads((out / "run.json").read_text())
    assert run["model"] == {"name": "tiny-classifier", "version": "0.0.1-test", "sha256": model.manifest.sha256,
                            "integrity": model.manifest.integrity, "manifest": str(model.manifest.path)}
    assert len(model.manifest.integrity) == 64
    assert {r["model_integrity"] for r in rows.values()} == {model.manifest.integrity}  # every row names the seal
    assert run["operating_point"] == "balanced" and run["site_file"] == ""
    assert run["thresholds"]["pneumonia"] == {"rule_out": 0.2, "balanced": 0.5, "threshold": 0.5, "kind": "balanced",
                                              "source": "model"}
    assert run["policy"]["name"] == "default" and run["policy"]["path"] == "default"
    assert run["policy"]["levels"]["critical"]["covered_by_model"] == []
    assert run["policy"]["levels"]["urgent"]["covered_by_model"] == ["pneumonia", "effusion"]
    assert run["priority_levels"] == ["critical", "urgent", "routine", "not_assessed", "normal"]
    assert run["counts"]["files"] == 7 and run["counts"]["scored"] == 5 and run["counts"]["excluded"] == 1
    assert sum(run["counts"]["images_by_priority"].values()) == 7
    assert run["counts"]["images_by_priority"]["not_assessed"] >= 4
    assert run["quality"]["failed"] == 2 and run["quality"]["failed_by_check"] == {"size": 1, "dynamic_range": 1}
    assert run["device"] == "cpu" and run["execution_providers"] == ["CPUExecutionProvider"]
    assert run["inputs"] == [str(scans)] and run["cwd"] and "segmenter" not in run
    assert run["started_at"] <= run["finished_at"] and run["finished_at"].endswith("+00:00")
    # the summary: the triage outcome and the note that no critical finding is covered
    t = summary.outcomes["triage"]
    assert isinstance(t, TriageOutcome) and t.worklist == out / "worklist.csv"
    assert sum(t.images_by_priority.values()) == 7 and sum(t.studies_by_priority.values()) == len(wl)
    assert any("no critical finding" in n for n in t.notes)
    assert summary.run_json == out / "run.json" and summary.report is None
    assert not (out / "masks").exists()


def test_default_policy_names_missing_labels_at_info_not_warning(scans: Path, tmp_path: Path, model: Classifier,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    build_hooks(_config(scans, tmp_path / "o"), model)
    recs = [r for r in caplog.records if "pneumothorax" in r.getMessage()]
    assert len(recs) == 1 and recs[0].levelname == "INFO"
    # a policy file the user wrote still warns (a label it names may be a typo)
    pol = tmp_path / "p.toml"
    pol.write_text('schema_version = 1\nname = "mine"\n[levels.urgent]\nfindings = ["effusoin"]\nthreshold = "balanced"\n')
    caplog.clear()
    build_hooks(_config(scans, tmp_path / "o", policy=pol), model)
    assert any(r.levelname == "WARNING" and "effusoin" in r.getMessage() for r in caplog.records)


def test_hooks_run_in_order(scans: Path, tmp_path: Path, model: Classifier, segmenter: Path) -> None:
    hooks = build_hooks(_config(scans, tmp_path / "o", lungs=True, segmenter=str(segmenter)), model)
    names = [h.name for h in hooks]
    assert names.index("lungs") < names.index("quality") < names.index("triage") and names[-1] == "triage"
    assert [h.order for h in hooks] == sorted(h.order for h in hooks)


def _site_for(model: Classifier, path: Path, *, name: str | None = None) -> Path:
    m = model.manifest
    site = SiteCalibration(
        model_name=name or m.name, model_version=m.version, model_sha256=m.sha256, method="platt",
        target_sensitivity=0.95, created="2026-01-01",
        labels={"pneumonia": LabelSiteCalibration("pneumonia", "platt", rule_out=0.3, balanced=0.45, a=2.0, b=-1.0),
                "effusion": LabelSiteCalibration("effusion", "isotonic", rule_out=0.1, balanced=0.6,
                                                 x=(0.0, 0.5, 1.0), y=(0.0, 0.8, 1.0))},
    )
    return write_site(path, site)


def test_site_file_rewrites_scores_and_thresholds(scans: Path, tmp_path: Path, model: Classifier) -> None:
    site_path = _site_for(model, tmp_path / "site.toml")
    base, out = tmp_path / "base", tmp_path / "site"
    run_predict(_config(scans, base), model=model)
    run_predict(_config(scans, out, site=site_path), model=model)
    site = load_site(site_path, manifest=model.manifest)
    plain, rows = _rows(base), _rows(out)
    for name, r in rows.items():
        assert r["site_file"] == str(site_path.resolve())
        if r["status"] != "scored":
            assert r["model_score_pneumonia"] is None and r["score_pneumonia"] is None
            continue
        model_scores = {lab: plain[name][f"score_{lab}"] for lab in LABELS}
        assert [r[f"model_score_{lab}"] for lab in LABELS] == pytest.approx(list(model_scores.values()))
        site_scores = apply_site(model_scores, site)
        assert [r[f"score_{lab}"] for lab in LABELS] == pytest.approx([site_scores[lab] for lab in LABELS])
        assert r["score_abnormal"] == pytest.approx(plain[name]["score_abnormal"])  # not in the site file
        assert not math.isclose(r["score_pneumonia"], r["model_score_pneumonia"])
        if r["quality"] == "ok":
            expected = triage_record(from_row(r), manifest=model.manifest, policy=load_policy(None), site=site)
            assert (r["priority"], r["priority_reason"]) == (expected.priority, expected.priority_reason)
    header = list(read_jsonl(out / "results.jsonl")[0])
    assert [c for c in header if c.startswith("model_score_")] == [f"model_score_{lab}" for lab in LABELS]
    run = json.loads((out / "run.json").read_text())
    assert run["site_file"] == str(site_path.resolve())
    assert run["thresholds"]["pneumonia"] == {"rule_out": 0.3, "balanced": 0.45, "threshold": 0.45, "kind": "balanced",
                                              "source": "site"}
    assert run["thresholds"]["abnormal"]["source"] == "model"


def test_bad_policy_or_site_fails_before_anything_is_written(scans: Path, tmp_path: Path, model: Classifier) -> None:
    wrong = _site_for(model, tmp_path / "other.toml", name="another-model")
    with pytest.raises(ConfigError, match="made for model 'another-model'"):
        run_predict(_config(scans, tmp_path / "a", site=wrong), model=model)
    with pytest.raises(ConfigError, match="site file not found"):
        run_predict(_config(scans, tmp_path / "b", site=tmp_path / "missing.toml"), model=model)
    bad = tmp_path / "bad.toml"
    bad.write_text('schema_version = 1\n[levels.routine]\nfindings = ["x"]\nthreshold = "balanced"\n')
    with pytest.raises(ConfigError, match="may only define"):
        run_predict(_config(scans, tmp_path / "c", policy=bad), model=model)
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        run_predict(_config(scans, tmp_path / "d", send="nohostport"), model=model)
    # a model without thresholds for a label cannot be triaged
    nothr = tmp_path / "m2"
    man = make_tiny_classifier(nothr, name="no-thresholds")
    data = json.loads(man.read_text())
    del data["thresholds"]["effusion"]
    edit_manifest(man, data)
    with pytest.raises(ModelError, match="effusion"):
        run_predict(_config(scans, tmp_path / "e"), model=load_classifier(man, device="cpu"))
    assert not any((tmp_path / d).exists() for d in "abcde")


def test_policy_file_changes_priorities(scans: Path, tmp_path: Path, model: Classifier) -> None:
    pol = tmp_path / "p.toml"
    pol.write_text('schema_version = 1\nname = "effusion-critical"\n[levels.critical]\nfindings = ["effusion"]\n'
                   'threshold = "rule_out"\n')
    out = tmp_path / "out"
    summary = run_predict(_config(scans, out, policy=pol), model=model)
    policy = load_policy(pol)
    for r in _rows(out).values():
        if r["status"] == "scored" and r["quality"] == "ok":
            assert r["priority"] == triage_record(from_row(r), manifest=model.manifest, policy=policy).priority
            assert (r["priority"] == "critical") == (r["score_effusion"] >= 0.2)
    run = json.loads((out / "run.json").read_text())
    assert run["policy"]["name"] == "effusion-critical" and run["policy"]["path"] == str(pol.resolve())
    assert run["operating_point"] == "rule_out" and run["thresholds"]["effusion"]["threshold"] == 0.2
    assert summary.outcomes["triage"].notes == ()


def test_lungs_masks_areas_and_lung_quality_checks(scans: Path, tmp_path: Path, model: Classifier,
                                                   segmenter: Path) -> None:
    out = tmp_path / "out"
    run_predict(_config(scans, out, lungs=True, segmenter=str(segmenter)), model=model)
    rows = _rows(out)
    quality: dict[str, str] = {}
    for name, r in rows.items():
        if r["status"] != "scored":
            assert r["mask_path"] is None and r["lung_area_px"] is None
            continue
        assert r["mask_path"] == f"masks/{Path(name).stem}.png"
        labels = cv2.imread(str(out / r["mask_path"]), cv2.IMREAD_UNCHANGED)
        image = read_image(r["path"])
        assert labels.dtype == np.uint8 and labels.shape == image.shape  # original size, as `segment` writes it
        assert r["lung_area_px"] == int(np.count_nonzero(labels))
        if name == "pa.dcm":
            assert r["lung_area_mm2"] == pytest.approx(r["lung_area_px"] * 0.25)
        else:
            assert r["lung_area_mm2"] is None
        # the quality column is exactly the checks over this image and this mask
        mask = LungMask(labels, ("background", "right_lung", "left_lung"), image.source)
        assert r["quality"] == assess_quality(image, mask).summary()
        quality[name] = r["quality"]
    assert quality["pa.dcm"] == "ok" and rows["pa.dcm"]["lung_area_px"] > 0 and rows["pa.dcm"]["priority"] != "not_assessed"
    run = json.loads((out / "run.json").read_text())
    assert run["segmenter"]["name"] == "tiny-segmenter" and run["segmenter"]["labels"] == ["background", "right_lung",
                                                                                           "left_lung"]
    assert run["options"]["lungs"] is True


def test_lungs_default_follows_report() -> None:
    c = PredictConfig(inputs=(Path("x"),), out_dir=Path("o"))
    assert not c.lungs_on and not c.reports_on
    assert PredictConfig(inputs=(Path("x"),), out_dir=Path("o"), report=True).lungs_on
    assert not PredictConfig(inputs=(Path("x"),), out_dir=Path("o"), report=True, lungs=False).lungs_on
    send = PredictConfig(inputs=(Path("x"),), out_dir=Path("o"), send="h:104")
    assert send.dicom_on and send.reports_on and send.lungs_on


def test_unscored_rows_reach_hooks(scans: Path, tmp_path: Path, model: Classifier) -> None:
    class Seen(PredictHook):
        name = "seen"
        columns = ("seen",)

        def on_unscored(self, record: ImageRecord, ctx: Any) -> ImageRecord:
            return record.replace(extra={"seen": record.status.value})

    class Bad(PredictHook):
        name = "bad"

        def on_unscored(self, record: ImageRecord, ctx: Any) -> ImageRecord:
            raise RuntimeError("boom")

    run_predict(_config(scans, tmp_path / "o"), model=model, hooks=[Bad(), Seen()])
    rows = _rows(tmp_path / "o")
    assert rows["lat.dcm"]["seen"] == "excluded" and rows["junk.dcm"]["seen"] == "failed"
    assert rows["pa.dcm"]["seen"] is None


def test_reports_at_finish(scans: Path, tmp_path: Path, model: Classifier, segmenter: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    summary = run_predict(_config(scans / "s1", out, report=True, pdf=False, segmenter=str(segmenter)), model=model)
    assert isinstance(summary.report, ReportOutcome) and summary.report.errors == ()
    assert summary.report.index == out / "report" / "index.html" and summary.report.index.is_file()
    assert (out / "masks" / "pa.png").is_file()  # --report turns the lungs on
    html = unescape(summary.report.index.read_text())
    with open(out / "worklist.csv", newline="") as f:
        assert all(w["priority"] in html and w["priority_reason"][:30] in html for w in csv.DictReader(f))
    # a report that cannot be written is an error of the outcome, never lost scores
    def broken(*a: Any, **k: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(report_batch, "build_reports", broken)  # imported when a run writes reports
    summary = run_predict(_config(scans / "s1", tmp_path / "o2", report=True, lungs=False), model=model)
    assert summary.report is not None and summary.report.index is None
    assert summary.report.errors == ("reports not written (RuntimeError: disk on fire)",)
    assert (tmp_path / "o2" / "results.csv").is_file() and (tmp_path / "o2" / "worklist.csv").is_file()


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_the_decoder_reported_damaged_is_scored_but_not_triaged(tmp_path: Path, model: Classifier,
                                                                        workers: int) -> None:
    from hostile import jpeg_damaged

    from cxrtriage.monitor.profile import quality_kind

    scans = tmp_path / "scans"
    jpeg_damaged(scans / "zeroed.dcm", "zeroed")
    jpeg_damaged(scans / "intact.dcm", "intact")
    jpeg_damaged(scans / "cut.dcm", "cut")
    out = tmp_path / "out"
    run_predict(_config(scans, out, workers=workers), model=model)
    rows = _rows(out)
    damaged, intact, cut = rows["zeroed.dcm"], rows["intact.dcm"], rows["cut.dcm"]
    assert damaged["status"] == "scored" and all(0 <= damaged[f"score_{lab}"] <= 1 for lab in LABELS)
    assert damaged["quality"].startswith("damaged pixel data: libjpeg reported while decoding: Corrupt JPEG data")
    assert quality_kind(damaged["quality"]) == "damaged pixel data"  # monitor's category
    assert damaged["priority"] == "not_assessed" and damaged["priority_reason"] == (
        f"quality check failed: {damaged['quality']}")
    assert intact["quality"] == "ok" and intact["priority"] != "not_assessed"
    assert cut["status"] == "failed" and "no EOI marker FFD9" in cut["reason"]
    run = json.loads((out / "run.json").read_text())
    assert run["quality"]["failed_by_check"] == {"decoding": 1}
    assert run["quality"]["limits"]["decoder_damage_messages"] == "Corrupt JPEG data|Premature end of JPEG file"


def test_files_that_are_no_image_are_neither_counted_nor_listed_as_images_of_a_study(tmp_path: Path,
                                                                                     model: Classifier) -> None:
    root = tmp_path / "in"
    uid = "1.2.826.0.1.3680043.8.498.4242"
    write_dicom(root / "pa.dcm", rows=256, cols=240, pixels=_ramp_pixels(256, 240, 1), study_uid=uid)
    write_dicom(root / "lat.dcm", view="LL", study_uid=uid)  # excluded, yet an image of the study
    write_dicom(root / "sr.dcm", study_uid=uid, SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11")  # a report, no image
    cv2.imwrite(str(root / "x.png"), (_ramp_pixels(256, 256, 3) // 16).astype(np.uint8))
    (root / "README.md").write_text("how these files were made\n")
    (root / "make_data.py").write_text("print('hello')\n")
    out = tmp_path / "out"
    run_predict(_config(root, out), model=model)
    with open(out / "worklist.csv", newline="") as f:
        wl = {w["study_key"]: w for w in csv.DictReader(f)}
    assert set(wl) == {uid, f"folder:{root}"}  # no study made of the text files, none holding them
    assert (wl[uid]["n_images"], wl[uid]["paths"]) == ("2", f"{root / 'lat.dcm'};{root / 'pa.dcm'}")
    assert wl[uid]["priority_reason"].endswith("; 1 of 2 images not assessed")
    assert (wl[f"folder:{root}"]["n_images"], wl[f"folder:{root}"]["paths"]) == ("1", str(root / "x.png"))
    assert "not assessed" not in wl[f"folder:{root}"]["priority_reason"]
    rows = _rows(out)
    assert all(rows[n]["status"] == "excluded" and rows[n]["study_key"] is None for n in ("sr.dcm", "README.md"))
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["excluded"] == 4 and run["counts"]["images_by_priority"]["not_assessed"] == 1  # the lateral
