"""`cxrtriage train classifier|segmenter` without --out never replaces a model already in the default folder (from
the project root: the shipped one); an explicit --out is taken as given (the documented recipe). No torch needed: the
folder is checked before anything else."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cxrtriage.cli.app import app


def _invoke(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, " ".join(res.output.split())


@pytest.mark.parametrize(("kind", "folder"), [("classifier", "cxr-classifier"), ("segmenter", "lung-segmenter")])
def test_default_out_refuses_to_replace_a_model(kind: str, folder: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "models" / folder
    model.mkdir(parents=True)
    (model / "manifest.json").write_text('{"name": "shipped"}')
    (model / "model.onnx").write_bytes(b"weights")
    code, out = _invoke("train", kind, "--data", tmp_path / "no-data")
    assert code == 4, out
    assert f"{model}: holds a model already (manifest.json, model.onnx)" in out
    assert f"--out models/{folder}-retrained" in out and f"--out models/{folder} to replace that model on purpose" in out
    assert (model / "manifest.json").read_text() == '{"name": "shipped"}' and sorted(p.name for p in model.iterdir()) == [
        "manifest.json", "model.onnx"]


@pytest.mark.parametrize("kind", ["classifier", "segmenter"])
def test_default_out_is_used_while_empty_and_explicit_out_is_taken_as_given(kind: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    # no model in ./models yet: the folder check passes and the next one (the data) speaks
    code, out = _invoke("train", kind, "--data", tmp_path / "no-data")
    assert code == 4 and "training data folder not found" in out, out
    model = tmp_path / "models" / "cxr-classifier"
    model.mkdir(parents=True)
    (model / "manifest.json").write_text("{}")
    code, out = _invoke("train", kind, "--data", tmp_path / "no-data", "--out", model)
    assert code == 4 and "training data folder not found" in out, out


def test_help_says_what_the_default_out_does() -> None:
    code, out = _invoke("train", "classifier", "--help")
    assert code == 0 and "only while it holds no model" in out and "shipped model" in out
