"""Lung-cropped classifier input (issue 15 experiment): the box rule, and a --tiny training run with --lung-crop --size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from cxrtriage.cli.app import app  # noqa: E402
from cxrtriage.errors import ConfigError  # noqa: E402
from cxrtriage.io.raster import read_raster  # noqa: E402
from cxrtriage.model.manifest import load_manifest, verify_onnx  # noqa: E402
from cxrtriage.preprocess import PreprocessRecipe, to_model_input  # noqa: E402
from cxrtriage.train.data import cached_arrays, classifier_records  # noqa: E402
from cxrtriage.train.lungcrop import crop_image, lung_box  # noqa: E402
from cxrtriage.types import Image2D, InputKind, SourceRef  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_lung_box_widens_by_the_margin_and_clips_to_the_image() -> None:
    m = np.zeros((100, 80), bool)
    m[20:70, 10:30] = True  # right lung (image left)
    m[25:75, 45:70] = True  # left lung
    assert lung_box(m, 0.0) == (20, 10, 55, 60)
    # 10% of the 55 x 60 box per side: 6 rows (5.5 rounds to even) and 6 columns
    assert lung_box(m, 0.1) == (14, 4, 67, 72)
    assert lung_box(m, 0.5) == (0, 0, 100, 80)  # clipped at every edge


def test_lung_box_refuses_a_fragment() -> None:
    m = np.zeros((100, 100), bool)
    m[40:44, 40:44] = True  # 16 pixels: 0.16% of the image, not a lung field
    assert lung_box(m, 0.1) is None
    m2 = np.zeros((100, 100), bool)
    m2[10:90, 50:53] = True  # enough pixels, but a 3-pixel-wide sliver: narrower than 20% of the image
    assert lung_box(m2, 0.1) is None


def test_crop_image_cuts_full_resolution_pixels_and_none_keeps_the_image() -> None:
    px = np.arange(30 * 40, dtype=np.float32).reshape(30, 40)
    im = Image2D(pixels=px, value_range=(0.0, 2000.0), source=SourceRef(path="x.png", kind=InputKind.RASTER))
    out = crop_image(im, (5, 10, 20, 15))
    assert out.shape == (20, 15) and np.array_equal(out.pixels, px[5:25, 10:25])
    assert out.value_range == im.value_range
    assert crop_image(im, None) is im


@pytest.mark.data
@pytest.mark.slow
def test_tiny_classifier_training_with_lung_crop(shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("CXRTRIAGE_TRAIN_CACHE", str(cache))
    out = tmp_path / "cls"
    seg = REPO / "models" / "lung-segmenter"
    res = CliRunner().invoke(app, ["train", "classifier", "--data", str(shared_data), "--out", str(out), "--tiny",
                                   "--seed", "1", "--lung-crop", str(seg), "--lung-crop-margin", "0.05", "--size", "80"])
    assert res.exit_code == 0, res.output
    verify_onnx(load_manifest(out / "manifest.json"))
    m = load_manifest(out / "manifest.json")
    assert m.preprocessing.size == 80  # --size reaches the recipe the manifest records
    info = json.loads((out / "train_config.json").read_text())
    assert info["config"]["lung_crop"] == str(seg) and info["config"]["lung_crop_margin"] == 0.05
    assert info["config"]["size"] == 80

    # one box per training image, cached outside the model folder; real chests give real (smaller) boxes
    (box_file,) = cache.glob("lungboxes_*.json")
    boxes = json.loads(box_file.read_text())
    paths = [line.split(",")[0] for line in (out / "splits" / "splits.csv").read_text().splitlines()[1:]]
    assert sorted(boxes) == sorted(paths)
    cropped = {p: b for p, b in boxes.items() if b is not None}
    assert len(cropped) >= 0.8 * len(boxes)
    smaller = [p for p, b in cropped.items() if b[2] * b[3] < 0.95 * np.prod(read_raster(shared_data / p).shape)]
    assert len(smaller) >= 0.5 * len(cropped)

    # the arrays trained on are exactly the recipe applied to the cropped image (the inference path's function)
    _, records = classifier_records(shared_data, seed=1)
    rec = next(r for r in records if r.path == smaller[0])
    recipe = PreprocessRecipe(size=80)
    x, _ = cached_arrays(shared_data, [rec], recipe, boxes={rec.path: tuple(cropped[rec.path])})
    want = to_model_input(crop_image(read_raster(shared_data / rec.path), tuple(cropped[rec.path])), recipe).array[0]
    np.testing.assert_allclose(x[0].astype(np.float32), want, atol=1e-3)
    whole, _ = cached_arrays(shared_data, [rec], recipe)
    assert np.abs(whole[0].astype(np.float32) - want).mean() > 0.01

    bad = CliRunner().invoke(app, ["train", "classifier", "--data", str(shared_data), "--out", str(tmp_path / "bad"),
                                   "--tiny", "--lung-crop", str(seg), "--lung-crop-margin", "2"])
    assert isinstance(bad.exception, ConfigError) and "--lung-crop-margin" in str(bad.exception)
    missing = CliRunner().invoke(app, ["train", "classifier", "--data", str(shared_data), "--out", str(tmp_path / "bad2"),
                                       "--tiny", "--lung-crop", str(tmp_path / "no-such-model")])
    assert isinstance(missing.exception, ConfigError) and "no segmenter ONNX file" in str(missing.exception)
    assert not (tmp_path / "bad2").exists()
