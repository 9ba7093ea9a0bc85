"""`cxrtriage explain` end to end with tiny models (CliRunner)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import edit_manifest, make_tiny_classifier, make_tiny_segmenter, write_textured_png
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.model import Classifier, load_model

runner = CliRunner()


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = make_tiny_classifier(tmp_path / "models" / "tiny", size=32).parent
    inputs = tmp_path / "in"
    write_textured_png(inputs / "a" / "wide.png", 60, 90, 1)
    write_textured_png(inputs / "b" / "tall.png", 90, 60, 2)
    (inputs / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a PNG")
    return model, inputs, tmp_path / "out"


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "explain.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_explain_label_methods_evaluate_and_a_bad_file(setup: tuple[Path, Path, Path]) -> None:
    model, inputs, out = setup
    res = runner.invoke(app, ["explain", str(inputs), "--out", str(out), "--model", str(model), "--label", "pneumonia",
                              "--method", "gradcam", "--method", "occlusion", "--evaluate", "--steps", "4"])
    assert res.exit_code == 0, res.output
    rows = _rows(out)
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["path"].endswith("broken.png")
    done = [r for r in rows if r["status"] in ("map", "no_map")]
    assert {(Path(r["path"]).name, r["method"]) for r in done} == {
        (n, m) for n in ("wide.png", "tall.png") for m in ("gradcam", "occlusion")}
    for r in done:
        assert r["label"] == "pneumonia" and r["model_name"] == "tiny-classifier" and r["threshold"] == "0.5000"
        if r["status"] == "no_map":
            assert r["reason"] and not r["png"]
            continue
        stem = Path(r["path"]).stem
        assert r["png"] == f"{stem}__pneumonia__{r['method']}.png"
        assert (out / r["png"]).is_file()
        raw = np.load(out / r["npy"])
        assert raw.shape == ((60, 90) if stem == "wide" else (90, 60))
        assert 0.0 <= float(raw.min()) and float(raw.max()) <= 1.0
        for key in ("deletion_auc", "insertion_auc", "deletion_auc_reversed", "insertion_auc_reversed",
                    "deletion_auc_random", "insertion_auc_random"):
            assert 0.0 <= float(r[key]) <= 1.0
    assert any(r["status"] == "map" for r in done)
    assert "Decision support only" in res.output


def test_flagged_explains_exactly_the_labels_over_the_balanced_threshold(setup: tuple[Path, Path, Path]) -> None:
    model, inputs, out = setup
    res = runner.invoke(app, ["explain", str(inputs / "a"), "--out", str(out), "--model", str(model), "--flagged",
                              "--method", "eigencam"])
    assert res.exit_code == 0, res.output
    clf = load_model(model)
    assert isinstance(clf, Classifier)
    from cxrtriage.io.raster import read_raster

    scores = clf.predict(read_raster(inputs / "a" / "wide.png"))
    expected = {lab for lab, s in scores.items() if s >= 0.5}
    rows = _rows(out)
    if expected:
        assert {r["label"] for r in rows} == expected
    else:
        assert [r["status"] for r in rows] == ["nothing_flagged"]


def test_label_or_flagged_is_required_and_unknown_labels_are_refused(setup: tuple[Path, Path, Path]) -> None:
    model, inputs, out = setup
    res = runner.invoke(app, ["explain", str(inputs), "--out", str(out), "--model", str(model)])
    assert res.exit_code == 4 and "either --label" in res.output
    res = runner.invoke(app, ["explain", str(inputs), "--out", str(out), "--model", str(model), "--label", "fracture"])
    assert res.exit_code == 4 and "abnormal, pneumonia, effusion" in res.output


def test_method_all_skips_what_a_headless_model_cannot_do(setup: tuple[Path, Path, Path]) -> None:
    model, inputs, out = setup
    manifest = json.loads((model / "manifest.json").read_text())
    del manifest["head"]
    edit_manifest(model / "manifest.json", manifest)
    res = runner.invoke(app, ["explain", str(inputs / "a"), "--out", str(out), "--model", str(model), "--label", "abnormal",
                              "--method", "all", "--scorecam-top-k", "2", "--occlusion-patch", "8"])
    assert res.exit_code == 0, res.output
    assert {r["method"] for r in _rows(out)} == {"eigencam", "scorecam", "occlusion"}
    assert "method 'gradcam' skipped" in res.output
    res = runner.invoke(app, ["explain", str(inputs / "a"), "--out", str(out), "--model", str(model), "--label", "abnormal",
                              "--method", "gradcam"])
    assert res.exit_code == 3 and "still apply" in res.output


def test_lung_mask_measures_outside_share_and_gate_gates_from_the_cli(setup: tuple[Path, Path, Path],
                                                                       tmp_path: Path) -> None:
    model, inputs, out = setup
    seg = make_tiny_segmenter(tmp_path / "models" / "seg", size=32, seed=3).parent  # seed 3: dark pixels are "lung"
    args = ["explain", str(inputs / "a"), "--model", str(model), "--label", "effusion", "--method", "layercam",
            "--segmenter", str(seg)]
    res = runner.invoke(app, [*args, "--out", str(out), "--lung-mask"])
    assert res.exit_code == 0, res.output
    (row,) = _rows(out)
    assert row["status"] == "map", row
    from cxrtriage.io.raster import read_raster
    from cxrtriage.model import Segmenter

    s = load_model(seg)
    assert isinstance(s, Segmenter)
    mask = s.segment(read_raster(inputs / "a" / "wide.png")).binary()
    assert 0.1 < mask.mean() < 0.9
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * 3 + 1, 2 * 3 + 1))  # radius 0.03 * 90 ≈ 3
    dilated = cv2.dilate(mask.astype(np.uint8), kernel) > 0
    # --lung-mask alone: the map is NOT gated (evidence outside the lungs stays visible) and its share is measured
    ungated = np.load(out / row["npy"])
    assert float(ungated[~dilated].max(initial=0.0)) > 0.0
    share = float(row["outside_lungs"])
    assert 0.0 <= share <= 1.0 and row["shortcut"] == str(share >= 0.5).lower()
    # --gate: gated as before; the share is the same, measured before gating
    gated_out = tmp_path / "gated"
    res = runner.invoke(app, [*args, "--out", str(gated_out), "--gate"])
    assert res.exit_code == 0, res.output
    (row,) = _rows(gated_out)
    raw = np.load(gated_out / row["npy"])
    assert float(raw[~dilated].max(initial=0.0)) == 0.0 < float(raw[dilated].max())
    assert float(row["outside_lungs"]) == share
