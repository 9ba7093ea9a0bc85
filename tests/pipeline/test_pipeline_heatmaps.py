"""Tests of ``predict --heatmaps``: overlays of the flagged findings from the run's own forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import edit_manifest, make_tiny_classifier, read_jsonl, write_dicom
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.errors import ConfigError
from cxrtriage.explain import explain
from cxrtriage.io import read_image
from cxrtriage.model import load_classifier
from cxrtriage.pipeline.config import PredictConfig
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
