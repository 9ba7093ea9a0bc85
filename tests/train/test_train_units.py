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


def test_operating_points_rule_out_is_never_above_balanced() -> None:
    """Validation scores where Youden's point already reaches 95 % sensitivity (the shipped pneumonia label): the
    highest threshold reaching 95 % lies above it, and rule-out must not be that less sensitive point."""
    y = np.r_[np.ones(20), np.zeros(80)]
    p = np.r_[np.linspace(0.80, 0.98, 19), 0.30, np.linspace(0.02, 0.25, 77), np.linspace(0.31, 0.39, 3)]
    ops = operating_points(y, p)
    assert ops["balanced"]["sensitivity"] == 1.0
    assert ops["rule_out"] == ops["balanced"]  # before: threshold 0.8, sensitivity 0.95 (above balanced, 0.3)


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


def test_mean_probability_averages_member_probabilities_and_keeps_logit_semantics() -> None:
    from cxrtriage.errors import ConfigError
    from cxrtriage.train.segmenter import MeanProbability

    torch.manual_seed(0)
    a, b = UNet(3, base=4, stem_stride=2).eval(), UNet(3, base=4, stem_stride=2).eval()
    with torch.no_grad():  # weights far from the initial ones, so that the two members disagree
        for w in [*a.parameters(), *b.parameters()]:
            w.normal_(0.0, 0.5)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        out = MeanProbability([a, b]).eval()(x)
        pa, pb = a(x).softmax(1), b(x).softmax(1)
        assert torch.allclose(out.softmax(1), (pa + pb) / 2, atol=1e-6)  # softmax of the output = the mean
        assert torch.equal(out.argmax(1), (pa + pb).argmax(1))
        assert (pa.argmax(1) != pb.argmax(1)).any()  # the members disagree somewhere: the test can tell them apart
        alone = MeanProbability([a]).eval()(x)
        assert torch.equal(alone.argmax(1), a(x).argmax(1)) and torch.isfinite(alone).all()
    with pytest.raises(ConfigError, match="at least one"):
        MeanProbability([])


def test_parse_source_shares_accepts_a_mix_and_refuses_bad_ones() -> None:
    from cxrtriage.errors import ConfigError
    from cxrtriage.train.classifier import parse_source_shares

    assert parse_source_shares("nih14=0.7, ieee_lungs=0.15,kermany224=0.15") == (
        ("nih14", 0.7), ("ieee_lungs", 0.15), ("kermany224", 0.15))
    assert parse_source_shares("nih14=1") == (("nih14", 1.0),)
    for bad in ("nih14=0.7,ieee_lungs=0.2", "chexpert=1", "nih14", "nih14=x", "nih14=-0.5,kermany224=1.5",
                "nih14=0.5,nih14=0.5", ""):
        with pytest.raises(ConfigError, match="--source-shares"):
            parse_source_shares(bad)


def _recs() -> list[Record]:
    recs = [Record(path=f"nih14/images/{i}.png", source="nih14", patient=f"nih14:{i}", labels={"abnormal": i % 2})
            for i in range(6)]
    for r, s in zip(recs, ("train", "train", "val", "val", "test", "test"), strict=True):
        r.split = s
    return recs


def test_check_splits_match_accepts_same_splits_and_refuses_a_moved_patient(tmp_path: Path) -> None:
    from cxrtriage.errors import ConfigError
    from cxrtriage.train.classifier import check_splits_match
    from cxrtriage.train.data import write_splits

    recs = _recs()
    csv_path = tmp_path / "splits" / "splits.csv"
    write_splits(recs[:4], csv_path)  # a subset (e.g. a --tiny checkpoint) is fine
    assert check_splits_match(recs, csv_path) == 4
    recs[2].split = "test"  # a validation patient of the checkpoint would now be tested on: refuse
    with pytest.raises(ConfigError, match=r"nih14/images/2\.png.*'val' there but 'test' now"):
        check_splits_match(recs, csv_path)
    with pytest.raises(ConfigError, match="no splits/splits.csv"):
        check_splits_match(recs, tmp_path / "nowhere.csv")


def test_load_init_copies_weights_and_refuses_another_architecture(tmp_path: Path) -> None:
    from cxrtriage.errors import ConfigError
    from cxrtriage.train.classifier import load_init

    torch.manual_seed(0)
    src = SlimResNet(3, (4, 8, 8, 16), (1, 1, 1, 1), stem=4)
    path = tmp_path / "model.pt"
    torch.save({"config": src.config, "state_dict": src.state_dict()}, path)
    torch.manual_seed(1)
    dst = SlimResNet(3, (4, 8, 8, 16), (1, 1, 1, 1), stem=4)
    assert not torch.equal(dst.head.weight, src.head.weight)
    load_init(dst, path)
    assert all(torch.equal(a, b) for a, b in zip(dst.state_dict().values(), src.state_dict().values(), strict=True))
    with pytest.raises(ConfigError, match="architecture"):
        load_init(SlimResNet(3, (4, 8, 8, 32), (1, 1, 1, 1), stem=4), path)
    with pytest.raises(ConfigError, match="file not found"):
        load_init(dst, tmp_path / "missing.pt")


def test_selection_score_single_source_label() -> None:
    from cxrtriage.errors import ConfigError
    from cxrtriage.train.classifier import check_selection, selection_score

    labels = ("abnormal", "pneumonia")
    y = np.array([[1, 1], [0, 0], [1, 0], [0, 1], [1, 1], [0, 0]], np.float32)
    src = np.array(["nih14", "nih14", "nih14", "nih14", "kermany224", "kermany224"])
    z = np.array([[2, 0], [1, 0], [3, 0], [0, 0], [-5, 0], [5, 0]], np.float32)  # nih14 abnormal perfectly ranked
    assert selection_score(z, y, src, labels, "nih14:abnormal") == pytest.approx(1.0)
    assert selection_score(z, y, src, labels, "kermany224:abnormal") == pytest.approx(0.0)
    assert np.isnan(selection_score(z, y, src, labels, "ieee_lungs:abnormal"))  # no such images: undefined
    check_selection("mean", labels)
    check_selection("nih14:pneumonia", labels)
    for bad in ("nih14", "nih14:effusion", "chexpert:abnormal"):
        with pytest.raises(ConfigError, match="--select-by"):
            check_selection(bad, labels)


def test_classifier_card_includes_experiments_section_only_when_given() -> None:
    import json

    from cxrtriage.train.card import classifier_card

    folder = Path(__file__).resolve().parents[2] / "models" / "cxr-classifier"
    data = json.loads((folder / "manifest.json").read_text())
    info = json.loads((folder / "train_config.json").read_text())
    counts = {"Infiltration": 98, "no_finding": 80}
    plain = classifier_card(data, info, counts)
    assert "What else was tried" not in plain and "experiments.md" not in plain
    extra = "## What else was tried\n\nAn adult fine-tune: NIH test abnormal AUROC 0.123 (marker).\n"
    card = classifier_card(data, info, counts, extra)
    assert card.count("## What else was tried") == 1 and "0.123 (marker)" in card
    assert card.index("## What else was tried") < card.index("## Limitations")
    assert "`experiments.md`" in card and "reported under \"What else was tried\"" in card
