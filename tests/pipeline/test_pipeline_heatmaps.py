"""Tests of ``predict --heatmaps``: overlays of the flagged findings from the run's own forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import edit_manifest, make_study_classifier, make_tiny_classifier, read_jsonl, write_dicom
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.errors import ConfigError
from cxrtriage.explain import explain
from cxrtriage.explain.overlay import OverlayText
from cxrtriage.io import read_image
from cxrtriage.model import load_classifier
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks import heatmaps as heatmaps_hook
from cxrtriage.pipeline.predict import run_predict


def _model_flagging(tmp_path: Path, threshold: float) -> Path:
    """A tiny classifier whose balanced thresholds are all ``threshold`` (0 flags every label, 1 none)."""
    manifest = make_tiny_classifier(tmp_path / "model")
    data = json.loads(manifest.read_text())
    for t in data["thresholds"].values():
        t["balanced"]["threshold"] = threshold
        t["rule_out"]["threshold"] = min(threshold, 0.2)
    edit_manifest(manifest, data)
    return manifest


def _inputs(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    yy, xx = np.mgrid[0:48, 0:32]
    blob = (((yy - 30) ** 2 + (xx - 10) ** 2) < 30).astype(np.uint16) * 3000 + 200
    write_dicom(root / "a.dcm", rows=48, cols=32, pixels=blob)  # non-square
    write_dicom(root / "lat.dcm", view="LL")
    return root


def test_flagged_findings_get_overlays_and_raw_maps_at_the_original_geometry(tmp_path: Path) -> None:
    manifest = _model_flagging(tmp_path, 0.0)
    out = tmp_path / "out"
    run_predict(PredictConfig(inputs=(_inputs(tmp_path),), out_dir=out, model=str(manifest), workers=0, heatmaps=True))
    rows = {Path(r["path"]).name: r for r in read_jsonl(out / "results.jsonl")}
    assert rows["lat.dcm"]["heatmaps"] in (None, [], "")
    assert "heatmaps failed" not in rows["a.dcm"]["reason"]
    pngs = rows["a.dcm"]["heatmaps"]
    assert pngs, "every label is flagged at threshold 0, so at least one non-empty map must be drawn"
    model = load_classifier(manifest, device="cpu")
    image = read_image(_inputs(tmp_path) / "a.dcm")
    for rel in pngs:
        png = out / rel
        assert png.is_file() and png.suffix == ".jpg" and cv2.imread(str(png)) is not None  # JPEG overlays
        label = png.stem.split("__")[1]
        raw = np.load(png.with_suffix(".npy"))
        assert raw.shape == (48, 32) and raw.dtype == np.float16  # small images keep their size
        # The map written by predict equals the public API's map for the same image and label.
        ref = explain(model, image, label, method="gradcam")
        assert ref.original is not None
        np.testing.assert_allclose(raw.astype(np.float32), ref.original, atol=1e-3)
    run = json.loads((out / "run.json").read_text())
    assert run["heatmaps"]["method"] == "gradcam"


def test_nothing_flagged_writes_no_overlay(tmp_path: Path) -> None:
    manifest = _model_flagging(tmp_path, 1.0)
    out = tmp_path / "out"
    run_predict(PredictConfig(inputs=(_inputs(tmp_path),), out_dir=out, model=str(manifest), workers=0, heatmaps=True))
    rows = read_jsonl(out / "results.jsonl")
    assert all(not r["heatmaps"] for r in rows)
    assert not any("failed" in (r["reason"] or "") for r in rows), [r["reason"] for r in rows]
    heatmaps = out / "heatmaps"
    assert not heatmaps.exists() or not list(heatmaps.glob("*.*"))


def test_a_method_needing_extra_model_passes_is_refused(tmp_path: Path) -> None:
    manifest = _model_flagging(tmp_path, 0.0)
    with pytest.raises(ConfigError, match="scorecam"):
        run_predict(PredictConfig(inputs=(_inputs(tmp_path),), out_dir=tmp_path / "o", model=str(manifest), workers=0,
                                  heatmaps=True, heatmap_method="scorecam"))


def test_cli_heatmaps_option(tmp_path: Path) -> None:
    manifest = _model_flagging(tmp_path, 0.0)
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, ["predict", str(_inputs(tmp_path)), "--out", str(out), "--model", str(manifest),
                                   "--workers", "0", "--heatmaps", "--heatmap-method", "layercam"])
    assert res.exit_code == 0, res.output
    assert list((out / "heatmaps").glob("a__*__layercam.jpg"))
    assert "(layercam, ungated)" in res.output and "evidence outside the lungs" in res.output  # the summary row


def test_gating_needs_heatmaps(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--heatmap-gate .* needs --heatmaps"):
        PredictConfig(inputs=(tmp_path,), out_dir=tmp_path / "o", heatmap_gate=True)


def test_a_map_of_a_label_that_does_not_decide_for_the_population_says_reported_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # nodule is validated for no population, effusion for adults: on a 40-year-old both are drawn (threshold 0), and
    # only nodule's overlay says it does not move the priority instead of "FLAGGED"
    manifest = make_study_classifier(tmp_path / "model")
    data = json.loads(manifest.read_text())
    for t in data["thresholds"].values():
        t["balanced"]["threshold"] = 0.0
    edit_manifest(manifest, data)
    yy, xx = np.mgrid[0:256, 0:240]  # big enough to pass the quality checks, so that triage decides
    write_dicom(tmp_path / "in" / "a.dcm", rows=256, cols=240, PatientAge="040Y",
                pixels=(((yy - 128) ** 2 + (xx - 70) ** 2) < 1500).astype(np.uint16) * 3000 + 200)
    drawn: dict[str, tuple[str, ...]] = {}
    original = heatmaps_hook.write_overlays

    def spy(out_dir: Path, stem: str, image: object, maps: list, *args: object, **kwargs: object) -> list[Path]:  # type: ignore[type-arg]
        drawn.update({h.label: h.notes for h in maps if not h.empty})
        return original(out_dir, stem, image, maps, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(heatmaps_hook, "write_overlays", spy)
    run_predict(PredictConfig(inputs=(tmp_path / "in",), out_dir=tmp_path / "out", model=str(manifest), workers=0,
                              heatmaps=True))
    row = read_jsonl(tmp_path / "out" / "results.jsonl")[0]
    assert row["population"] == "adult" and {"nodule", "effusion"} <= set(drawn)
    assert any(n.startswith("reported only: not validated for the adult population") for n in drawn["nodule"])
    assert not any(n.startswith("reported only") for n in drawn["effusion"])
    lines = OverlayText("nodule", 0.4, 0.2, "balanced", "m", "Grad-CAM", drawn["nodule"]).lines()
    assert "-> above, reported only" in lines[0] and "FLAGGED" not in lines[0]
    assert "-> FLAGGED" in OverlayText("effusion", 0.4, 0.2, "balanced", "m", "Grad-CAM", drawn["effusion"]).lines()[0]
