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


def test_plain_onnx_import_then_predict_validate_predict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented --onnx workflow end to end: the import has no operating points, so predict gives scores without
    priorities and says what to run; validate sets them; predict then triages."""
    import csv

    from factories import read_jsonl, write_textured_png

    make_tiny_classifier(tmp_path / "src", labels=("abnormal", "effusion"))
    models = tmp_path / "models"
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(models))
    code, out = _invoke("models", "import", "--onnx", tmp_path / "src" / "model.onnx", "--labels", "abnormal,effusion",
                        "--features", "features", "--size", "16", "--out", models / "my-cxr",
                        "--images", SAMPLE / "cxr_pa_rg1_quarter.png")
    assert code == 0, out
    assert "operating points: none yet" in out and "cxrtriage models validate my-cxr IMAGES" in out
    card = (models / "my-cxr" / "MODEL_CARD.md").read_text()
    parity = card.split("## Parity check at import")[1].split("\n## ")[0]
    assert "no source framework" in parity and "ran the graph on 1 image(s)" in parity and "1 of them all finite" in parity
    assert "`cxrtriage models validate my-cxr IMAGES... --labels LABELS.csv --out DIR`" in card

    images = tmp_path / "images"
    for i in range(30):
        write_textured_png(images / f"img{i:02d}.png", 240, 230 + i % 5, seed=i)
    code, out = _invoke("predict", images, "--model", "my-cxr", "--out", tmp_path / "p0", "--workers", "0")
    assert code == 0, out
    assert "none: scores only" in out and "cxrtriage models validate my-cxr" in out
    rows = read_jsonl(tmp_path / "p0" / "results.jsonl")
    assert {r["priority"] for r in rows} == {"not_assessed"} and all(r["score_effusion"] is not None for r in rows)

    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "abnormal", "effusion"])
        for k, r in enumerate(sorted(rows, key=lambda r: float(r["score_effusion"]))):  # type: ignore[arg-type]
            w.writerow([Path(str(r["path"])).name, k % 2, int(k >= 20)])
    code, out = _invoke("models", "validate", "my-cxr", images, "--labels", labels, "--out", tmp_path / "val",
                        "--n-boot", "50", "--workers", "0")
    assert code == 0, out
    assert "effusion: operating points set (it had none)" in out and "optimistic" in out
    assert "only 15 positive(s)" in out and "only 10 positive(s)" in out  # fewer than 20: the target is not established

    code, out = _invoke("predict", images, "--model", "my-cxr", "--out", tmp_path / "p1", "--workers", "0")
    assert code == 0, out
    assert "scores only" not in out and "priority (images)" in out
    assert {r["priority"] for r in read_jsonl(tmp_path / "p1" / "results.jsonl")} - {"not_assessed"}
