"""The shipped models: sha256 matches, head initializers exist, and ONNX equals the PyTorch model from model.pt."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cxrtriage.io.raster import read_raster
from cxrtriage.model.manifest import load_manifest, verify_onnx
from cxrtriage.preprocess import to_model_input

REPO = Path(__file__).resolve().parents[2]
CLASSIFIER = REPO / "models" / "cxr-classifier"
SEGMENTER = REPO / "models" / "lung-segmenter"


@pytest.mark.parametrize("folder", [CLASSIFIER, SEGMENTER], ids=["classifier", "segmenter"])
def test_shipped_manifest_sha256_matches_onnx(folder: Path) -> None:
    m = load_manifest(folder / "manifest.json")
    verify_onnx(m)
    assert m.model_card is not None and m.model_card.is_file()
    assert m.version == {CLASSIFIER: "1.0.0", SEGMENTER: "1.1.0"}[folder] and m.metrics


def test_models_readme_publishes_the_shipped_hashes() -> None:
    """The published table (what users compare `models info` with) names each shipped model's current hashes."""
    import json

    table = (REPO / "models" / "README.md").read_text(encoding="utf-8")
    for folder in (CLASSIFIER, SEGMENTER):
        data = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        row = f"| `{data['name']}` {data['version']} | `{data['sha256']}` | `{data['integrity']['sha256']}` |"
        assert row in table, f"models/README.md: update the row of {data['name']} to {row}"


def test_shipped_classifier_head_and_thresholds() -> None:
    m = load_manifest(CLASSIFIER / "manifest.json")
    assert m.head is not None and m.calibration is not None and m.calibration.method == "platt"
    inits = {i.name: tuple(i.dims) for i in onnx.load(str(m.onnx_file)).graph.initializer}
    n = len(m.labels)
    shape = inits[m.head.weight]
    assert shape[1 if m.head.transposed else 0] == n
    assert m.head.bias is not None and inits[m.head.bias] == (n,)
    assert set(m.thresholds) == set(m.labels) == set(m.calibration.a)
    for lab, t in m.thresholds.items():
        assert 0.0 <= t.rule_out.threshold <= 1.0 and 0.0 <= t.balanced.threshold <= 1.0
        assert t.rule_out.sensitivity is not None and t.rule_out.sensitivity >= 0.95
        # rule-out is the more sensitive point: never above balanced (pneumonia was 0.752 above 0.607, sens 0.952)
        assert t.rule_out.threshold <= t.balanced.threshold, lab
        assert t.balanced.sensitivity is not None and t.rule_out.sensitivity >= t.balanced.sensitivity, lab
    assert all(lab == lab.lower() and " " not in lab for lab in m.labels)


def _images(shared_data: Path, folder: Path, per_source: int = 2) -> list[Path]:
    with open(folder / "splits" / "splits.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    picked: list[Path] = []
    for src in ("nih14", "kermany224", "ieee_lungs"):
        picked += [shared_data / r["path"] for r in rows if r["source"] == src][:per_source]
    return picked


def _torch_and_session(folder: Path):  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    import onnxruntime as ort

    if folder == SEGMENTER:
        from cxrtriage.train.segmenter import load_segmenter

        net = load_segmenter(folder)  # one U-Net (1.0.0) or the ensemble of U-Nets (1.1.0)
    else:
        from cxrtriage.train.nets import build_model

        ckpt = torch.load(folder / "model.pt", map_location="cpu", weights_only=True)
        net = build_model(ckpt["config"])
        net.load_state_dict(ckpt["state_dict"])
        net.eval()
    m = load_manifest(folder / "manifest.json")
    return torch, net, m, ort.InferenceSession(str(m.onnx_file), providers=["CPUExecutionProvider"])


@pytest.mark.data
def test_shipped_classifier_onnx_matches_pytorch_on_real_images(shared_data: Path) -> None:
    torch, net, m, sess = _torch_and_session(CLASSIFIER)
    paths = _images(shared_data, CLASSIFIER)
    assert len(paths) == 6
    x = np.stack([to_model_input(read_raster(p), m.preprocessing).array for p in paths])
    logits, feats = sess.run([m.outputs["logits"], m.outputs["features"]], {m.input_name: x})
    with torch.no_grad():
        t_logits, t_feats = net(torch.from_numpy(x))
    assert np.abs(logits - t_logits.numpy()).max() <= 1e-4
    assert np.abs(feats - t_feats.numpy()).max() <= 1e-4
    # Grad-CAM exactness: GAP(features) through the named head initializers gives the logits.
    assert m.head is not None
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(m.onnx_file)).graph.initializer}
    w = inits[m.head.weight].T if m.head.transposed else inits[m.head.weight]
    assert m.head.bias is not None
    assert np.abs(feats.mean(axis=(2, 3)) @ w.T + inits[m.head.bias] - logits).max() <= 1e-4
    assert feats.min() >= 0.0


@pytest.mark.data
def test_shipped_segmenter_onnx_matches_pytorch_on_real_images(shared_data: Path) -> None:
    torch, net, m, sess = _torch_and_session(SEGMENTER)
    paths = _images(shared_data, SEGMENTER, per_source=3)
    assert paths
    x = np.stack([to_model_input(read_raster(p), m.preprocessing).array for p in paths])
    (masks,) = sess.run([m.outputs["masks"]], {m.input_name: x})
    with torch.no_grad():
        t_masks = net(torch.from_numpy(x)).numpy()
    assert masks.shape == (len(paths), 3, m.preprocessing.size, m.preprocessing.size)
    assert np.abs(masks - t_masks).max() <= 1e-4
    # each lung label occupies its own side of the image
    lab = masks.argmax(1)
    for k in range(len(paths)):
        cols = np.arange(lab.shape[2])
        right_x = cols[np.any(lab[k] == 1, axis=0)].mean()
        left_x = cols[np.any(lab[k] == 2, axis=0)].mean()
        assert right_x < left_x
