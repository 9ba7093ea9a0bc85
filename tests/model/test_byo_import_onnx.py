"""`cxrtriage models import --onnx`: a plain ONNX classifier or segmenter becomes a sealed model folder, without torch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import make_tiny_classifier, make_tiny_segmenter
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.model import load_classifier, load_segmenter

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"


def _invoke(*args: object) -> tuple[int, str]:
    res = CliRunner().invoke(app, [str(a) for a in args])
    return res.exit_code, " ".join(res.output.split())


def test_plain_onnx_classifier_with_head_and_an_ignored_output(tmp_path: Path) -> None:
    make_tiny_classifier(tmp_path / "src", labels=("a", "b", "c"))
    code, out = _invoke("models", "import", "--onnx", tmp_path / "src" / "model.onnx", "--labels", "Effusion,-,Mass",
                        "--features", "features", "--size", "16", "--out", tmp_path / "mine",
                        "--images", SAMPLE / "cxr_pa_rg1_quarter.png")
    assert code == 0, out
    assert "2 labels, 1 outputs ignored" in out and "exact Grad-CAM" in out
    clf = load_classifier(tmp_path / "mine")
    assert clf.labels == ("effusion", "mass")
    assert clf.manifest.head is not None and clf.manifest.head.weight == "head.weight"
    data = json.loads((tmp_path / "mine" / "manifest.json").read_text())
    assert data["labels"] == ["effusion", None, "mass"] and "UNKNOWN" in (tmp_path / "mine" / "MODEL_CARD.md").read_text()


def test_plain_onnx_with_the_wrong_label_count_is_refused(tmp_path: Path) -> None:
    make_tiny_classifier(tmp_path / "src", labels=("a", "b", "c"))
    code, out = _invoke("models", "import", "--onnx", tmp_path / "src" / "model.onnx", "--labels", "a,b",
                        "--size", "16", "--out", tmp_path / "mine", "--images", SAMPLE / "cxr_pa_rg1_quarter.png")
    assert code == 4 and "gives 3 values per image, but --labels names 2 outputs" in out


def test_plain_onnx_segmenter(tmp_path: Path) -> None:
    make_tiny_segmenter(tmp_path / "src")
    code, out = _invoke("models", "import", "--onnx", tmp_path / "src" / "model.onnx", "--task", "segmentation",
                        "--labels", "background,right_lung,left_lung", "--size", "16", "--out", tmp_path / "seg")
    assert code == 0, out
    seg = load_segmenter(tmp_path / "seg")
    assert seg.manifest.labels == ("background", "right_lung", "left_lung")


@pytest.mark.parametrize("args", [("--labels", "a"), ()])
def test_import_needs_one_source(tmp_path: Path, args: tuple[str, ...]) -> None:
    code, out = _invoke("models", "import", "--out", tmp_path / "x", *args)
    assert code == 4 and "give exactly one of --xrv, --pytorch, --torchscript, --onnx" in out
