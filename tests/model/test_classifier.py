"""Tests of the classifier: calibration math, batching, features, tamper and name checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from factories import edit_manifest, make_tiny_classifier, make_tiny_segmenter

from cxrtriage.errors import ModelError
from cxrtriage.model import Classifier, Segmenter, load_model
from cxrtriage.model.classifier import calibrate
from cxrtriage.model.manifest import sha256_file
from cxrtriage.types import Image2D, InputKind, SourceRef


def _image(h: int = 40, w: int = 30, seed: int = 1) -> Image2D:
    rng = np.random.default_rng(seed)
    return Image2D(pixels=(rng.random((h, w)) * 4000).astype(np.float32), value_range=(0.0, 4095.0),
                   source=SourceRef(path="mem.png", kind=InputKind.RASTER))


def _set_calibration(manifest: Path, a: dict[str, float], b: dict[str, float]) -> None:
    data = json.loads(manifest.read_text())
    data["calibration"] = {"method": "platt", "a": a, "b": b}
    edit_manifest(manifest, data)


def test_calibrate_matches_platt_formula() -> None:
    logits = np.array([[0.0, 2.0, -3.0], [1000.0, -1000.0, 0.5]], np.float32)
    a = np.array([1.0, 0.5, -2.0], np.float32)
    b = np.array([0.0, -1.0, 0.25], np.float32)
    expected = 1.0 / (1.0 + np.exp(-(logits.astype(np.float64) * a + b)))
    got = calibrate(logits, a, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert np.all(np.isfinite(got))


def test_run_applies_manifest_calibration_to_raw_logits(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    _set_calibration(man, {"abnormal": 2.0, "pneumonia": 0.5, "effusion": 1.0},
                     {"abnormal": -1.0, "pneumonia": 0.3, "effusion": 0.0})
    clf = load_model(man, device="cpu")
    assert isinstance(clf, Classifier)
    x = np.stack([clf.preprocess(_image(seed=s)).array for s in range(5)])
    raw = ort.InferenceSession(str(tmp_path / "m" / "model.onnx")).run(["logits"], {"image": x})[0]
    out = clf.run(x)
    np.testing.assert_allclose(out.logits, raw, rtol=1e-5, atol=1e-6)
    a, b = np.array([2.0, 0.5, 1.0]), np.array([-1.0, 0.3, 0.0])
    np.testing.assert_allclose(out.scores, 1 / (1 + np.exp(-(raw * a + b))), rtol=1e-5, atol=1e-6)
    assert out.features is None
    single = clf.predict(_image(seed=0))
    assert list(single) == ["abnormal", "pneumonia", "effusion"]
    np.testing.assert_allclose(list(single.values()), out.scores[0], rtol=1e-6)


def test_features_output(tmp_path: Path) -> None:
    clf = load_model(make_tiny_classifier(tmp_path / "m", channels=5), device="cpu")
    assert isinstance(clf, Classifier)
    out = clf.run(clf.preprocess(_image()).array[None], features=True)
    assert out.features is not None and out.features.shape == (1, 5, 16, 16)
    assert float(out.features.min()) >= 0.0  # post-ReLU


def test_calibration_missing_a_label_is_refused(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    _set_calibration(man, {"abnormal": 1.0}, {"abnormal": 0.0})
    with pytest.raises(ModelError, match=r"'calibration.a' has no entry for label\(s\) \['pneumonia', 'effusion'\]"):
        load_model(man)


def test_tampered_onnx_is_refused(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    onnx_path = tmp_path / "m" / "model.onnx"
    data = bytearray(onnx_path.read_bytes())
    data[-5] ^= 0x01  # one bit of one weight
    onnx_path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match the manifest"):
        load_model(man)


def test_manifest_graph_name_mismatch(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    data = json.loads(man.read_text())
    data["outputs"]["logits"] = "scores"
    edit_manifest(man, data)
    with pytest.raises(ModelError, match=r"output 'scores' is not in the ONNX graph.*fix the manifest"):
        load_model(man)
    data["outputs"]["logits"] = "logits"
    data["input"]["name"] = "x"
    edit_manifest(man, data)
    with pytest.raises(ModelError, match="input 'x' is not in the ONNX graph"):
        load_model(man)


def test_label_count_mismatch_is_caught_at_load(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    data = json.loads(man.read_text())
    data["labels"] = ["a", "b"]
    for key in ("thresholds",):
        data.pop(key)
    data["calibration"] = None
    edit_manifest(man, data)  # sealed by its owner: only the graph can tell the count is wrong
    with pytest.raises(ModelError, match="'labels' lists 2 labels, but the ONNX graph's output 'logits' gives 3"):
        load_model(man)


def test_wrong_batch_shape(tmp_path: Path) -> None:
    clf = load_model(make_tiny_classifier(tmp_path / "m"))
    assert isinstance(clf, Classifier)
    with pytest.raises(ModelError, match=r"batch must be \[N, 1, 16, 16\]"):
        clf.run(np.zeros((2, 1, 8, 8), np.float32))


def test_task_check(tmp_path: Path) -> None:
    seg = make_tiny_segmenter(tmp_path / "s")
    with pytest.raises(ModelError, match="is a segmentation model, but a classification model is needed"):
        load_model(seg, task="classification")
    assert isinstance(load_model(seg), Segmenter)


def test_manifest_sha_is_what_factory_wrote(tmp_path: Path) -> None:
    man = make_tiny_classifier(tmp_path / "m")
    clf = load_model(man)
    assert clf.manifest.sha256 == sha256_file(tmp_path / "m" / "model.onnx")


@pytest.mark.parametrize(("affinity", "usable", "threads"), [(8, 2, 2), (2, 2, None)])
def test_a_cpu_quota_below_the_visible_cpus_caps_onnxruntime_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     affinity: int, usable: int,
                                                                     threads: int | None) -> None:
    from cxrtriage.model import session

    monkeypatch.setattr(session, "affinity_cpus", lambda: affinity)
    monkeypatch.setattr(session, "usable_cpus", lambda: usable)
    clf = load_model(make_tiny_classifier(tmp_path / "m"), device="cpu")
    assert clf.session.intra_op_threads == threads  # None: onnxruntime's own default (it follows the affinity)
    assert load_model(make_tiny_classifier(tmp_path / "m2"), device="cpu", intra_op_threads=1).session.intra_op_threads == 1
