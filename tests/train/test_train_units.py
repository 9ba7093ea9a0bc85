"""Fast unit tests of the training helpers (no real data): lung side split, Platt fit, patient splits, head lookup."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from cxrtriage.errors import ModelError  # noqa: E402
from cxrtriage.train.data import Record, _split_patients, split_lungs  # noqa: E402
from cxrtriage.train.evaluation import dice, fit_platt, operating_points, sigmoid  # noqa: E402
from cxrtriage.train.export import check_head, export_onnx, find_head  # noqa: E402
from cxrtriage.train.nets import SlimResNet, UNet  # noqa: E402


def test_split_lungs_puts_patient_right_lung_on_image_left() -> None:
    m = np.zeros((40, 60), np.uint8)
    m[5:35, 5:25] = 255  # image left  -> patient's right lung
    m[5:35, 35:55] = 255  # image right -> patient's left lung
    m[36:38, 50:53] = 255  # a small fragment near the left lung
    out = split_lungs(m)
    assert out[20, 10] == 1 and out[20, 40] == 2 and out[37, 51] == 2 and out[2, 2] == 0
    assert dice(out, out, 1) == 1.0


def test_split_lungs_refuses_single_component() -> None:
    m = np.zeros((20, 20), np.uint8)
    m[2:18, 2:18] = 255
    with pytest.raises(ValueError, match="two lung components"):
        split_lungs(m)


def test_fit_platt_recovers_known_parameters() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20000)
    y = (rng.uniform(size=z.size) < sigmoid(0.5 * z - 1.0)).astype(float)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-1.0, abs=0.07)


def test_operating_points_rule_out_reaches_sensitivity() -> None:
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(100), np.zeros(100)]
    p = np.r_[rng.uniform(0.3, 1, 100), rng.uniform(0, 0.7, 100)]
    ops = operating_points(y, p)
    assert ops["rule_out"]["sensitivity"] >= 0.95
    assert ops["rule_out"]["threshold"] <= ops["balanced"]["threshold"]


def test_patient_split_never_splits_a_patient() -> None:
    recs = [Record(path=f"x/{i}.png", source="s", patient=f"s:{i // 3}", labels={"abnormal": i % 2}) for i in range(300)]
    _split_patients(recs, (0.6, 0.2, 0.2), seed=3)
    by_patient: dict[str, set[str]] = {}
    for r in recs:
        by_patient.setdefault(r.patient, set()).add(r.split)
    assert all(len(s) == 1 for s in by_patient.values())
    assert {r.split for r in recs} == {"train", "val", "test"}


def test_exported_head_is_found_and_gap_linear_reproduces_logits(tmp_path: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    torch.manual_seed(0)
    net = SlimResNet(3, (4, 8, 8, 16), (1, 1, 1, 1), stem=4).eval()
    path = tmp_path / "m.onnx"
    export_onnx(net, path, 64, ("logits", "features"))
    head = find_head(path, net.head.weight.detach().numpy(), net.head.bias.detach().numpy())
    check_head(path, head, 3, 16)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    x = np.random.default_rng(0).uniform(-1, 1, (2, 1, 64, 64)).astype(np.float32)
    logits, feats = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits", "features"], {"image": x})
    assert feats.min() >= 0  # post-ReLU
    w = inits[str(head["weight"])]
    w = w.T if head["transposed"] else w
    assert np.abs(feats.mean(axis=(2, 3)) @ w.T + inits[str(head["bias"])] - logits).max() < 1e-4
    with pytest.raises(ModelError, match="head weight"):
        check_head(path, {**head, "weight": "nope"}, 3, 16)


def test_unet_output_is_full_resolution() -> None:
    net = UNet(3, base=4, stem_stride=2).eval()
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 3, 64, 64)
