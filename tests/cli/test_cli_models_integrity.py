"""Issue 11, row 8 through the CLI: an edited copy of a model folder is refused by `predict`, `models verify`
exits 3 naming the part, and `models seal` re-seals a deliberate edit (printing what changed)."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factories import make_tiny_classifier, make_tiny_segmenter, write_textured_png
from typer.testing import CliRunner

from cxrtriage.cli.app import app


@pytest.fixture()
def models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "models"
    make_tiny_classifier(root / "cxr-classifier")
    make_tiny_segmenter(root / "lung-segmenter")
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(root))
    monkeypatch.setenv("COLUMNS", "250")
    return root


@pytest.fixture()
def copy(models: Path, tmp_path: Path) -> Path:
    """A copy of the tiny classifier's folder, outside the models dir (what the issue's tester edited)."""
    return Path(shutil.copytree(models / "cxr-classifier", tmp_path / "copy"))


@pytest.fixture()
def scans(tmp_path: Path) -> Path:
    write_textured_png(tmp_path / "scans" / "a.png", 40, 36, 1)
    write_textured_png(tmp_path / "scans" / "b.png", 30, 44, 2)
    return tmp_path / "scans"


def _run(*args: str | Path) -> tuple[int, str]:
    r = CliRunner().invoke(app, [str(a) for a in args])
    return r.exit_code, r.output


def _tamper(folder: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Edit manifest.json as a text editor would: its old seal stays."""
    path = folder / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


def _predict(scans: Path, out: Path, model: Path) -> tuple[int, str]:
    return _run("predict", scans, "--out", out, "--model", model, "--workers", "0")


def _threshold_nan(d: dict[str, Any]) -> None:
    d["thresholds"]["pneumonia"]["balanced"]["threshold"] = "NaN"


def _swap_labels(d: dict[str, Any]) -> None:
    d["labels"][0], d["labels"][1] = d["labels"][1], d["labels"][0]


def _flip_calibration(d: dict[str, Any]) -> None:
    d["calibration"]["a"] = {k: -v for k, v in d["calibration"]["a"].items()}


def _onnx_dotdot(d: dict[str, Any]) -> None:
    d["onnx_file"] = "../../etc/passwd"


def _onnx_absolute(d: dict[str, Any]) -> None:
    d["onnx_file"] = "/etc/passwd"


def _card_outside(d: dict[str, Any]) -> None:
    d["model_card"] = "/etc/passwd"


# (edit, the field a tampering is reported by, the field re-sealing refuses (None: a valid value))
RECIPES = {
    "threshold_nan": (_threshold_nan, "thresholds.pneumonia", "thresholds.pneumonia.balanced.threshold"),
    "swapped_labels": (_swap_labels, "labels", None),
    "flipped_calibration": (_flip_calibration, "calibration.a", None),
    "onnx_file_dotdot": (_onnx_dotdot, "onnx_file", "onnx_file"),
    "onnx_file_absolute": (_onnx_absolute, "onnx_file", "onnx_file"),
    "model_card_outside": (_card_outside, "model_card", "model_card"),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_tampered_copy_is_refused_by_predict_and_verify(copy: Path, scans: Path, tmp_path: Path, recipe: str) -> None:
    edit, changed, invalid = RECIPES[recipe]
    _tamper(copy, edit)
    code, out = _predict(scans, tmp_path / "out", copy)
    assert code == 3, out
    assert f"changed since it was sealed: {changed}" in out and "models seal" in out
    assert not (tmp_path / "out" / "results.csv").exists()
    code, out = _run("models", "verify", copy)
    assert code == 3, out
    parts = "integrity, fields" if invalid else "integrity"  # an invalid value also fails the field validation
    assert "FAILED" in out and f"manifest.json: {parts} failed" in out, out
    assert "1 model(s) failed verification: copy" in out
    code, out = _run("models", "seal", copy)
    if invalid is not None:  # re-sealing an invalid value is refused, naming the field
        assert code == 3 and f"manifest field '{invalid}'" in out, out
    else:
        assert code == 0 and f"changed since the last seal: {changed}" in out, out


def test_verify_all_names_the_tampered_model(models: Path) -> None:
    _tamper(models / "cxr-classifier", _flip_calibration)
    code, out = _run("models", "verify")
    assert code == 3 and "1 model(s) failed verification: cxr-classifier" in out, out
    assert "calibration.a" in out
    code, out = _run("models", "list")
    assert code == 0 and "invalid manifest" in out and "sealed" in out  # the segmenter is still listed as sealed


def test_a_deliberate_edit_is_resealed_and_recorded(copy: Path, scans: Path, tmp_path: Path) -> None:
    code, out = _predict(scans, tmp_path / "before", copy)
    assert code == 0, out
    before = json.loads((tmp_path / "before" / "run.json").read_text())["model"]
    _tamper(copy, lambda d: d["thresholds"]["pneumonia"]["balanced"].update(threshold=0.3))  # a site's own choice
    code, out = _run("models", "seal", copy, "--dry-run")
    assert code == 0 and "thresholds.pneumonia" in out and "not written (--dry-run)" in out, out
    assert _run("models", "verify", copy)[0] == 3
    code, out = _run("models", "seal", copy)
    assert code == 0 and "changed since the last seal: thresholds.pneumonia" in out, out
    assert f"sealed: integrity {before['integrity']} → " in out
    code, out = _run("models", "verify", copy)
    assert code == 0 and "FAILED" not in out, out
    assert "already sealed, nothing changed" in _run("models", "seal", copy)[1]
    code, out = _predict(scans, tmp_path / "after", copy)
    assert code == 0, out
    after = json.loads((tmp_path / "after" / "run.json").read_text())["model"]
    assert after["sha256"] == before["sha256"] and after["integrity"] != before["integrity"]
    with open(tmp_path / "after" / "results.csv", newline="") as f:
        assert {r["model_integrity"] for r in csv.DictReader(f)} == {after["integrity"]}


def test_seal_refuses_a_replaced_network(copy: Path) -> None:
    onnx_path = copy / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\x00")
    code, out = _run("models", "seal", copy)
    assert code == 3 and "does not match the manifest" in out, out
    code, out = _run("models", "verify", copy)
    assert code == 3 and "onnx sha256 failed" in out, out
