"""Tests of model lookup by name, folder, ONNX path and manifest path."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from factories import edit_manifest, make_tiny_classifier, make_tiny_segmenter

from cxrtriage.errors import ConfigError, ModelError
from cxrtriage.model.manifest import load_manifest
from cxrtriage.model.registry import (
    SHIPPED_MODELS,
    command_name,
    hidden_by_env,
    list_models,
    manifest_for_results,
    models_dir,
    resolve_manifest_path,
)


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
    edit_manifest(loose / "net.json", data)
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


def test_manifest_for_results_by_recorded_name_or_explicit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(tmp_path / "models"))
    man = load_manifest(make_tiny_classifier(tmp_path / "models" / "tiny-classifier"))
    # Blanks and repeats (raw column values) are ignored; the sha256 compares case-insensitively.
    found = manifest_for_results(["tiny-classifier", "", "tiny-classifier"], [man.sha256.upper(), None], where="r.csv")
    assert found.path == man.path
    assert manifest_for_results([], [], man.path.parent, where="r.csv").path == man.path
    assert manifest_for_results(["renamed"], [man.sha256], str(man.path), where="r.csv").path == man.path


def test_manifest_for_results_refusals(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(tmp_path / "models"))
    man = load_manifest(make_tiny_classifier(tmp_path / "models" / "tiny-classifier"))
    other = load_manifest(make_tiny_classifier(tmp_path / "other", seed=5))
    with pytest.raises(ConfigError, match=r"^r\.csv: results come from several models \(\['a', 'b'\]\); evaluate one model"):
        manifest_for_results(["a", "b"], [man.sha256], where="r.csv")
    with pytest.raises(ConfigError, match="several models"):
        manifest_for_results(["tiny-classifier"], [man.sha256, other.sha256], where="r.csv")
    with pytest.raises(ConfigError, match="results name no model .* pass --model NAME_OR_PATH"):
        manifest_for_results(["", " "], [man.sha256], where="r.csv")
    with pytest.raises(ConfigError, match=f"produced by model sha256 {man.sha256[:12]}.*{other.path}.*pass --model pointing"):
        manifest_for_results(["tiny-classifier"], [man.sha256], other.path.parent, where="r.csv")
    with pytest.raises(ModelError, match="model 'gone' not found"):
        manifest_for_results(["gone"], [], where="r.csv")


def test_env_that_hides_the_shipped_models_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$CXRTRIAGE_MODELS_DIR replaces the search path: a shipped model it hides is named, with where it is and how to
    keep it, instead of the advice to set the variable that is already set."""
    mine = tmp_path / "mymodels"
    make_tiny_classifier(mine / "my-cxr")
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(mine))
    with pytest.raises(ModelError) as err:
        resolve_manifest_path("cxr-classifier")
    msg = str(err.value)
    assert f"CXRTRIAGE_MODELS_DIR is set to {mine}" in msg and "replaces the default search path" in msg
    assert f"'cxr-classifier' is a shipped model, in {SHIPPED_MODELS / 'cxr-classifier'}" in msg
    assert f"CXRTRIAGE_MODELS_DIR={mine}{os.pathsep}{SHIPPED_MODELS}" in msg and "or set CXRTRIAGE_MODELS_DIR" not in msg
    with pytest.raises(ModelError, match=f"the shipped models are in {SHIPPED_MODELS}"):
        resolve_manifest_path("no-such-model")
    # as the message says: with the shipped folder listed too, both are found
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", f"{mine}{os.pathsep}{SHIPPED_MODELS}")
    assert resolve_manifest_path("cxr-classifier") == SHIPPED_MODELS / "cxr-classifier" / "manifest.json"
    assert hidden_by_env("cxr-classifier") is None
    monkeypatch.delenv("CXRTRIAGE_MODELS_DIR")
    with pytest.raises(ModelError, match="or set CXRTRIAGE_MODELS_DIR"):  # unset: the advice stands
        resolve_manifest_path("no-such-model")


def test_command_name_is_what_a_command_finds_the_model_by(mdir: Path, tmp_path: Path) -> None:
    assert command_name(load_manifest(mdir / "cxr-classifier" / "manifest.json")) == "cxr-classifier"
    elsewhere = make_tiny_classifier(tmp_path / "elsewhere" / "mine", name="called-otherwise")
    assert command_name(load_manifest(elsewhere)) == str(elsewhere.parent)
    assert resolve_manifest_path(command_name(load_manifest(elsewhere))) == elsewhere


def test_results_of_a_resealed_manifest_find_theirs_and_never_the_other_thresholds(tmp_path: Path,
                                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate/monitor/calibrate took the installed manifest by name and sha256 alone: results scored by a validated
    copy (same ONNX file, new thresholds, new seal) were evaluated at the installed model's thresholds, silently."""
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(tmp_path / "models"))
    installed = load_manifest(make_tiny_classifier(tmp_path / "models" / "tiny-classifier"))
    shutil.copytree(installed.path.parent, tmp_path / "validated")
    data = json.loads((tmp_path / "validated" / "manifest.json").read_text())
    data["version"] = "0.0.1-validated"
    data["thresholds"]["effusion"]["balanced"]["threshold"] = 0.45
    validated = load_manifest(edit_manifest(tmp_path / "validated" / "manifest.json", data))
    assert validated.sha256 == installed.sha256 and validated.integrity != installed.integrity
    names, shas = ["tiny-classifier"], [installed.sha256]
    # the manifest run.json recorded wins over the name; the installed one's seal is refused, naming what to do
    assert manifest_for_results(names, shas, where="r.csv", integrities=[validated.integrity],
                                recorded=validated.path).path == validated.path
    with pytest.raises(ConfigError, match=rf"sealed {validated.integrity[:12]}.*{installed.path}.*0\.0\.1.*sealed "
                                          rf"{installed.short_integrity}.*pass --model pointing at the model folder"):
        manifest_for_results(names, shas, where="r.csv", integrities=[validated.integrity],
                             recorded=tmp_path / "moved" / "manifest.json")
    with pytest.raises(ConfigError, match="pass --model"):  # an explicit model is held to the seal too
        manifest_for_results(names, shas, installed.path.parent, where="r.csv", integrities=[validated.integrity])
    assert manifest_for_results(names, shas, validated.path.parent, where="r.csv",
                                integrities=[validated.integrity]).path == validated.path
    # a recorded manifest of another model is passed over for the one the name finds
    other = load_manifest(make_tiny_classifier(tmp_path / "other", seed=5))
    assert manifest_for_results(names, shas, where="r.csv", integrities=[installed.integrity],
                                recorded=other.path).path == installed.path
    with pytest.raises(ConfigError, match="2 differently sealed manifests"):
        manifest_for_results(names, shas, where="r.csv", integrities=[installed.integrity, validated.integrity])
