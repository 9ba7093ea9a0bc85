"""Tests of what a model brought by its user may say in its manifest: one operating point, op_norm, ignored outputs,
and of the friction around it (search path, messages)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import edit_manifest, make_tiny_classifier
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.errors import ModelError
from cxrtriage.explain.head import read_head
from cxrtriage.model import load_classifier, load_model
from cxrtriage.model.classifier import op_norm
from cxrtriage.model.registry import SHIPPED_MODELS, list_models, models_path, resolve_manifest_path

LABELS = ("abnormal", "pneumonia", "effusion")


def _edit(manifest: Path, **fields: object) -> Path:
    data = json.loads(manifest.read_text())
    data.update(fields)
    return edit_manifest(manifest, data)


def test_one_operating_point_per_label_fills_both_names(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    _edit(man, thresholds={lab: {"balanced": {"threshold": 0.3}} for lab in LABELS})
    clf = load_classifier(man)
    t = clf.manifest.thresholds["effusion"]
    assert t.rule_out.threshold == t.balanced.threshold == 0.3 and t.given == ("balanced",)


def test_op_norm_calibration_maps_each_point_to_half(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    points = {"abnormal": 0.07, "pneumonia": 0.2, "effusion": 0.5}
    _edit(man, calibration={"method": "op_norm", "op_threshs": points})
    clf = load_classifier(man)
    logits = np.array([[np.log(0.07 / 0.93), 0.0, 3.0], [-4.0, np.log(0.2 / 0.8), 0.0]], np.float32)
    scores = clf.scores_of(logits)
    assert scores[0, 0] == pytest.approx(0.5, abs=1e-6) and scores[1, 1] == pytest.approx(0.5, abs=1e-6)
    q = 1 / (1 + np.exp(-logits.astype(np.float64)))
    t = np.array(list(points.values()))
    # torchxrayvision's formula, written out: below the point p / 2t, from it on 1 - (1 - p) / (2 (1 - t))
    want = np.where(q < t, q / (2 * t), 1 - (1 - q) / (2 * (1 - t)))
    np.testing.assert_allclose(scores, want, atol=1e-6)
    assert np.all(np.diff(op_norm(np.linspace(0, 1, 11, dtype=np.float32)[:, None], np.float32([0.1]))[:, 0]) > 0)


def test_op_norm_refuses_a_missing_or_edge_point(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    _edit(man, calibration={"method": "op_norm", "op_threshs": {"abnormal": 0.1, "pneumonia": 0.2}})
    with pytest.raises(ModelError, match=r"calibration\.op_threshs' has no entry for label\(s\) \['effusion'\]"):
        load_classifier(man)
    _edit(man, calibration={"method": "op_norm", "op_threshs": {"abnormal": 0.1, "pneumonia": 0.2, "effusion": 1.0}})
    with pytest.raises(ModelError, match="calibration.op_threshs.effusion' is 0 or 1"):
        load_classifier(man)


def test_null_labels_are_ignored_outputs(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m", labels=("a", "b", "c", "d"))
    full = load_classifier(man)
    batch = np.random.default_rng(0).normal(size=(2, 1, 16, 16)).astype(np.float32)
    ref = full.run(batch, features=True)
    _edit(man, labels=["a", None, "c", None], thresholds={}, calibration={})
    clf = load_classifier(man)
    assert clf.labels == ("a", "c") and clf.manifest.n_outputs == 4
    out = clf.run(batch, features=True)
    np.testing.assert_array_equal(out.logits, ref.logits[:, [0, 2]])
    head = read_head(clf.manifest)
    assert head.weight.shape[0] == 2
    pooled = out.features.mean(axis=(2, 3)) if out.features is not None else None
    assert pooled is not None
    np.testing.assert_allclose(pooled @ head.weight.T + head.bias, out.logits, atol=1e-5)


def test_label_count_is_checked_against_the_graph_at_load(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    _edit(man, labels=[*LABELS, None], thresholds={}, calibration={})
    with pytest.raises(ModelError, match=r"lists 4 entries \(3 labels, the rest ignored\).*gives 3 values per image"):
        load_model(man)


def test_local_models_folder_keeps_the_shipped_models_visible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CXRTRIAGE_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    make_tiny_classifier(tmp_path / "models" / "mine")
    assert models_path() == (tmp_path / "models", SHIPPED_MODELS)
    names = {e.name for e in list_models()}
    assert {"mine", "cxr-classifier", "lung-segmenter"} <= names
    assert resolve_manifest_path("cxr-classifier") == SHIPPED_MODELS / "cxr-classifier" / "manifest.json"
    assert resolve_manifest_path("mine") == tmp_path / "models" / "mine" / "manifest.json"


def test_error_text_keeps_bracketed_parts_and_names_the_option(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "clf")
    _edit(man, labels=["abnormal", "pneumonia", "Effusion"])
    res = CliRunner().invoke(app, ["models", "info", str(man)])
    assert res.exit_code == 3
    assert "'labels[2]' must be a lower-case snake_case name" in " ".join(res.output.split())
    with pytest.raises(ModelError, match="choose another --segmenter"):
        load_model(make_tiny_classifier(tmp_path / "c2"), task="segmentation", option="--segmenter")


def test_print_error_shows_square_brackets(capsys: pytest.CaptureFixture[str]) -> None:
    from cxrtriage.cli.render import err_console, print_error

    with err_console.capture() as cap:
        print_error("manifest field 'labels[3]' must be [a-z]; got ['x']")
    assert "labels[3]' must be [a-z]; got ['x']" in cap.get()
