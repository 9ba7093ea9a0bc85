"""Tests of model lookup by name, folder, ONNX path and manifest path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from factories import make_tiny_classifier, make_tiny_segmenter

from cxrtriage.errors import ModelError
from cxrtriage.model.registry import list_models, models_dir, resolve_manifest_path


@pytest.fixture()
def mdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    make_tiny_classifier(root / "cxr-classifier")
    make_tiny_segmenter(root / "lung-segmenter")
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(root))
    return root


def test_models_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(tmp_path / "x"))
    assert models_dir() == tmp_path / "x"
    monkeypatch.delenv("CXRTRIAGE_MODELS_DIR")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    assert models_dir() == tmp_path / "models"
    (tmp_path / "models").rmdir()
    assert models_dir() == Path(__file__).resolve().parents[2] / "models"


def test_resolve_by_name_and_default(mdir: Path) -> None:
    assert resolve_manifest_path("lung-segmenter") == mdir / "lung-segmenter" / "manifest.json"
    assert resolve_manifest_path(None) == mdir / "cxr-classifier" / "manifest.json"


def test_unknown_name_lists_valid_ones(mdir: Path) -> None:
    with pytest.raises(ModelError, match="model 'nope' not found.*available models: cxr-classifier, lung-segmenter"):
        resolve_manifest_path("nope")


def test_resolve_by_folder_onnx_and_manifest(mdir: Path) -> None:
    folder = mdir / "cxr-classifier"
    assert resolve_manifest_path(folder) == folder / "manifest.json"
    assert resolve_manifest_path(str(folder / "model.onnx")) == folder / "manifest.json"
    assert resolve_manifest_path(folder / "manifest.json") == folder / "manifest.json"


def test_onnx_with_stem_json_manifest(tmp_path: Path) -> None:
    make_tiny_classifier(tmp_path / "a")
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(tmp_path / "a" / "model.onnx", loose / "net.onnx")
    data = json.loads((tmp_path / "a" / "manifest.json").read_text())
    data["onnx_file"] = "net.onnx"
    (loose / "net.json").write_text(json.dumps(data))
    assert resolve_manifest_path(loose / "net.onnx") == loose / "net.json"


def test_onnx_without_manifest_is_refused(tmp_path: Path) -> None:
    make_tiny_classifier(tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "model.onnx", tmp_path / "b" / "other.onnx")
    with pytest.raises(ModelError, match="no manifest found for this ONNX file"):
        resolve_manifest_path(tmp_path / "b" / "other.onnx")
    with pytest.raises(ModelError, match="model file not found"):
        resolve_manifest_path(tmp_path / "b" / "missing.onnx")


def test_list_models_reports_broken_manifests(mdir: Path) -> None:
    bad = mdir / "broken"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    entries = {e.name: e for e in list_models()}
    assert set(entries) == {"broken", "cxr-classifier", "lung-segmenter"}
    assert entries["broken"].manifest is None and "not valid JSON" in (entries["broken"].error or "")
    assert entries["cxr-classifier"].manifest is not None
    assert entries["cxr-classifier"].manifest.task.value == "classification"


def test_folder_without_manifest_says_so(mdir: Path) -> None:
    (mdir / "half").mkdir()
    with pytest.raises(ModelError, match="half has no manifest.json"):
        resolve_manifest_path("half")
