"""`cxrtriage models list|info|verify` through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import edit_manifest, make_tiny_classifier, make_tiny_segmenter
from typer.testing import CliRunner

from cxrtriage.cli.app import app


@pytest.fixture()
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    man = make_tiny_classifier(root / "cxr-classifier")
    data = json.loads(man.read_text())
    data["metrics"] = {"test": {"n_images": 321, "auroc": {"abnormal": 0.8125, "pneumonia": 0.7}},
                       "external": [{"site": "kermany", "auroc": 0.66}]}
    data["model_card"] = "MODEL_CARD.md"
    edit_manifest(man, data)
    make_tiny_segmenter(root / "lung-segmenter")
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(root))
    monkeypatch.setenv("COLUMNS", "200")
    return root


def _run(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(args))
    return r.exit_code, r.output


def test_list(models: Path) -> None:
    code, out = _run("models", "list")
    assert code == 0, out
    for text in ("cxr-classifier", "lung-segmenter", "classification", "segmentation", "0.0.1-test", "ok"):
        assert text in out


def test_info_renders_manifest_and_metrics(models: Path) -> None:
    code, out = _run("models", "info", "cxr-classifier")
    assert code == 0, out
    for text in ("tiny-classifier", "abnormal", "effusion", "letterbox", "percentile", "unit tests only",
                 "none (random weights)", "0.8125", "321", "kermany", "0.66", "verified", "platt", "MODEL_CARD.md"):
        assert text in out, text
    code, out = _run("models", "info", str(models / "lung-segmenter" / "model.onnx"))
    assert code == 0 and "right_lung" in out


def test_verify_ok_then_tampered(models: Path) -> None:
    code, out = _run("models", "verify")
    assert code == 0 and out.count("ok") >= 2
    onnx_path = models / "lung-segmenter" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\x00")
    code, out = _run("models", "verify")
    assert code == 3 and "FAILED" in out and "1 model(s) failed verification: lung-segmenter" in out
    code, _ = _run("models", "verify", "cxr-classifier")
    assert code == 0
    code, out = _run("models", "list")
    assert code == 0 and "MISMATCH" in out


def test_unknown_model_lists_valid_names(models: Path) -> None:
    code, out = _run("models", "info", "nope")
    assert code == 3 and "available models: cxr-classifier, lung-segmenter" in out


def test_empty_models_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(tmp_path))
    code, out = _run("models", "list")
    assert code == 0 and "No models found" in out
    code, out = _run("models", "verify")
    assert code == 3 and "no models found" in out


def test_info_shows_the_shipped_validation_reference_in_brief(repo_root: Path) -> None:
    res = CliRunner().invoke(app, ["models", "info", str(repo_root / "models" / "cxr-classifier")])
    assert res.exit_code == 0, res.output
    assert "Validation reference for `cxrtriage monitor`" in res.output
    assert "(n=117)" in res.output and "(n=494)" in res.output  # adult, pediatric
    assert "0.0004097" not in res.output  # the 101 quantiles per label stay in the manifest
