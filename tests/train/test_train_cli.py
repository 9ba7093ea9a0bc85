"""End-to-end --tiny training runs on a handful of real images: a loadable manifest whose sha256 matches."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from cxrtriage.cli.app import app  # noqa: E402
from cxrtriage.errors import ConfigError  # noqa: E402
from cxrtriage.model.manifest import load_manifest, verify_onnx  # noqa: E402

pytestmark = [pytest.mark.data, pytest.mark.slow]


def _run(kind: str, shared_data: Path, out: Path) -> None:
    res = CliRunner().invoke(app, ["train", kind, "--data", str(shared_data), "--out", str(out), "--tiny", "--seed", "1"])
    assert res.exit_code == 0, res.output


def _check_splits(out: Path) -> None:
    with open(out / "splits" / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {"path", "patient_id", "source", "split"}
    splits_by_patient: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        assert not Path(r["path"]).is_absolute()
        splits_by_patient.setdefault((r["source"], r["patient_id"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in splits_by_patient.values())


def test_tiny_classifier_training_writes_a_verified_model(shared_data: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_TRAIN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cls"
    _run("classifier", shared_data, out)
    m = load_manifest(out / "manifest.json")
    verify_onnx(m)
    assert m.labels[:2] == ("abnormal", "pneumonia") and "effusion" in m.labels
    assert m.outputs == {"logits": "logits", "features": "features"}
    assert m.head is not None and m.head.pooling == "gap"
    assert m.calibration is not None and set(m.calibration.a) == set(m.labels)
    assert m.preprocessing.size == 64 and (out / "MODEL_CARD.md").is_file() and (out / "model.pt").is_file()
    assert "test" in m.metrics and "subgroups" in m.metrics
    _check_splits(out)


def test_tiny_segmenter_training_writes_a_verified_model(shared_data: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_TRAIN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "seg"
    _run("segmenter", shared_data, out)
    m = load_manifest(out / "manifest.json")
    verify_onnx(m)
    assert m.labels == ("background", "right_lung", "left_lung") and m.outputs == {"masks": "masks"}
    assert set(m.metrics["dice"]["test"]) == {"lungs", "right_lung", "left_lung"}
    _check_splits(out)
    # the default recipe: the ensemble's members, in one model.pt and one ONNX graph that averages them
    import json

    import onnxruntime as ort
    import torch

    from cxrtriage.train.segmenter import ENSEMBLE_MEMBERS, MeanProbability, load_segmenter

    data = json.loads((out / "manifest.json").read_text())
    assert data["architecture"]["name"] == "MeanProbability"
    assert [a["recipe"] for a in data["architecture"]["members"]] == [n for n, _ in ENSEMBLE_MEMBERS]
    assert [mb["aug"] for mb in data["training"]["members"]] == ["basic", "heavy"]
    assert not (out / "members").exists()  # the members' own files are folded into model.pt
    net = load_segmenter(out)
    assert isinstance(net, MeanProbability) and len(net.members) == len(ENSEMBLE_MEMBERS)
    x = np.random.default_rng(0).standard_normal((2, 1, m.preprocessing.size, m.preprocessing.size)).astype(np.float32)
    (onnx_out,) = ort.InferenceSession(str(m.onnx_file), providers=["CPUExecutionProvider"]).run(["masks"], {"image": x})
    with torch.no_grad():
        assert np.abs(onnx_out - net(torch.from_numpy(x)).numpy()).max() <= 1e-4
    card = (out / "MODEL_CARD.md").read_text()
    assert "**basic**" in card and "**heavy**" in card and "log of that mean" in card
    from cxrtriage.train.segmenter import write_segmenter_card

    assert write_segmenter_card(out).read_text() == card  # re-rendered from the files alone: the same card


def test_tiny_segmenter_heavy_augmentation_and_size_are_recorded(shared_data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    monkeypatch.setenv("CXRTRIAGE_TRAIN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "seg"
    (out).mkdir()
    (out / "experiments.md").write_text("## What else was tried\n\nnothing yet\n")
    args = ["train", "segmenter", "--data", str(shared_data), "--out", str(out), "--tiny", "--seed", "1",
            "--aug", "heavy", "--size", "96", "--single"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    m = load_manifest(out / "manifest.json")
    verify_onnx(m)
    assert m.preprocessing.size == 96
    cfg = json.loads((out / "train_config.json").read_text())["config"]
    assert cfg["aug"] == "heavy" and cfg["size"] == 96
    assert json.loads((out / "manifest.json").read_text())["architecture"]["name"] == "UNet"
    card = (out / "MODEL_CARD.md").read_text()
    assert "MONOCHROME1" in card and "input 96 px" in card and "nothing yet" in card
    bad = CliRunner().invoke(app, ["train", "segmenter", "--data", str(shared_data), "--out", str(tmp_path / "bad"),
                                   "--tiny", "--aug", "wild", "--single"])
    assert isinstance(bad.exception, ConfigError) and "'heavy' or 'basic'" in str(bad.exception)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    mixed = CliRunner().invoke(app, ["train", "segmenter", "--data", str(shared_data), "--out", str(tmp_path / "bad"),
                                     "--tiny", "--aug", "heavy"])
    assert isinstance(mixed.exception, ConfigError) and "--single" in str(mixed.exception)
    assert not (tmp_path / "bad").exists()


def test_tiny_classifier_fine_tune_from_checkpoint_with_source_shares(shared_data: Path, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    import torch

    monkeypatch.setenv("CXRTRIAGE_TRAIN_CACHE", str(tmp_path / "cache"))
    base, ft = tmp_path / "base", tmp_path / "ft"
    _run("classifier", shared_data, base)
    args = ["train", "classifier", "--data", str(shared_data), "--out", str(ft), "--tiny", "--seed", "1",
            "--init-from", str(base / "model.pt"), "--epochs", "2", "--lr", "0.0003", "--warmup-epochs", "0.5",
            "--source-shares", "nih14=0.7,ieee_lungs=0.15,kermany224=0.15", "--select-by", "nih14:abnormal"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    verify_onnx(load_manifest(ft / "manifest.json"))
    info = json.loads((ft / "train_config.json").read_text())
    cfg = info["config"]
    assert cfg["init_from"] == str(base / "model.pt") and cfg["select_by"] == "nih14:abnormal"
    assert cfg["lr"] == 0.0003 and cfg["warmup_epochs"] == 0.5 and cfg["epochs"] == 2
    assert [tuple(x) for x in cfg["source_share"]] == [("nih14", 0.7), ("ieee_lungs", 0.15), ("kermany224", 0.15)]
    assert info["init_val"] is not None and len(info["history"]) == 2
    assert (ft / "splits" / "splits.csv").read_bytes() == (base / "splits" / "splits.csv").read_bytes()
    w0 = torch.load(base / "model.pt", weights_only=True)["state_dict"]["head.weight"]
    w1 = torch.load(ft / "model.pt", weights_only=True)["state_dict"]["head.weight"]
    assert not torch.equal(w0, w1)  # it started from the checkpoint and trained on

    # the default recipe is unchanged: the base run recorded the shipped shares, lr and selection
    base_cfg = json.loads((base / "train_config.json").read_text())["config"]
    assert base_cfg["init_from"] is None and base_cfg["select_by"] == "mean" and base_cfg["lr"] == 0.002
    assert [tuple(x) for x in base_cfg["source_share"]] == [("kermany224", 0.5), ("nih14", 0.4), ("ieee_lungs", 0.1)]

    # a checkpoint whose splits differ from this run's is refused (its validation/test patients could be trained on)
    with open(base / "splits" / "splits.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    moved = next(r for r in rows if r["split"] == "test")
    moved["split"] = "train"
    with open(base / "splits" / "splits.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    args[args.index("--out") + 1] = str(tmp_path / "ft2")
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, ConfigError)
    assert f"{moved['path']} is in split 'train' there but 'test' now" in str(res.exception)
    assert not (tmp_path / "ft2" / "model.pt").exists()
