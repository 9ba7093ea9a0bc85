"""End-to-end --tiny training runs on a handful of real images: a loadable manifest whose sha256 matches."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from cxrtriage.cli.app import app  # noqa: E402
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
