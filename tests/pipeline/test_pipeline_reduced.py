"""predict decodes JPEG 2000 only as far as its models need, and keeps every output on the full image's grid."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import block_means, make_cxr_dataset, make_tiny_classifier, make_tiny_segmenter, read_jsonl
from pydicom.uid import JPEG2000Lossless

from cxrtriage.model import load_classifier
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.hooks.heatmaps import OVERLAY_SIDE
from cxrtriage.pipeline.predict import build_hooks, pixel_needs, run_predict
from cxrtriage.preprocess import GeometryMode, PixelNeeds, PreprocessRecipe, apply, max_scale, plan_geometry, to_model_input
from cxrtriage.types import Image2D, InputKind, SourceRef


def _j2k_chest(path: Path, rows: int = 320, cols: int = 288) -> Path:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:rows, 0:cols]
    base = 800 + 2400 * np.sin(np.pi * xx / cols) * (0.5 + 0.5 * yy / rows)
    pixels = np.clip(base + rng.normal(0, 20, (rows, cols)), 0, 4095).astype(np.uint16)
    ds = make_cxr_dataset(rows=rows, cols=cols, pixels=pixels, PixelSpacing=[0.2, 0.2])
    ds.compress(JPEG2000Lossless)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_pixel_needs_is_the_tightest_of_the_models_and_the_drawn_outputs() -> None:
    r224, r256 = PreprocessRecipe(size=224), PreprocessRecipe(size=256)
    assert max_scale((1955, 1841), r224) == pytest.approx(min(1955 / 224, 1841 / 211))  # letterbox: 224 x 211
    assert max_scale((1955, 1841), PreprocessRecipe(size=224, geometry=GeometryMode.CENTER_CROP)) == pytest.approx(1841 / 224)
    assert max_scale((100, 100), r224) == 1.0  # never asks for more than the image has
    # the decoded image keeps at least twice a model input's pixels per side (oversample)
    assert PixelNeeds((r224, r256))((1955, 1841)) == pytest.approx(max_scale((1955, 1841), r256) / 2)
    assert PixelNeeds((r224,), oversample=1)((1955, 1841)) == pytest.approx(max_scale((1955, 1841), r224))
    assert PixelNeeds((r224,), min_long_side=640)((1955, 1841)) == pytest.approx(1955 / 640)
    assert PixelNeeds((r224,), full=True)((1955, 1841)) == 1.0
    assert PixelNeeds((r224,))((512, 512)) < 2  # a 512 px image is decoded in full for a 224 px model


def test_model_input_of_a_reduced_image_is_planned_on_the_full_geometry() -> None:
    src = SourceRef("x", InputKind.DICOM)
    full = np.tile(np.linspace(0, 1000, 200, dtype=np.float32), (160, 1))
    small = np.ascontiguousarray(full[::4, ::4])
    recipe = PreprocessRecipe(size=32)
    a = to_model_input(Image2D(full, (0, 1000), src), recipe)
    b = to_model_input(Image2D(small, (0, 1000), src, full_shape=(160, 200), scale=4), recipe)
    assert a.geometry == b.geometry == plan_geometry((160, 200), recipe)
    assert np.abs(a.array - b.array).max() < 0.05  # the same picture, from a quarter of the pixels


@pytest.mark.parametrize("scale", [2, 4])
def test_a_reduced_image_gives_the_area_average_of_each_input_pixels_footprint(scale: int) -> None:
    # odd sizes: the centre crop starts inside a reduced pixel and the last reduced row/column is partial
    rng = np.random.default_rng(11)
    full = cv2.GaussianBlur(rng.normal(0, 1, (393, 369)).astype(np.float32), (0, 0), 6) * 100
    src = SourceRef("x", InputKind.DICOM)
    small = Image2D(block_means(full, scale).astype(np.float32), (-1e3, 1e3), src, full_shape=full.shape, scale=scale)
    recipe = PreprocessRecipe(size=40, geometry=GeometryMode.CENTER_CROP)
    geo = plan_geometry(full.shape, recipe)
    y0, x0, ch, cw = geo.crop
    expected = cv2.resize(full[y0:y0 + ch, x0:x0 + cw], (40, 40), interpolation=cv2.INTER_AREA)
    got = apply._region_resized(small, geo.crop, (40, 40))
    rounded = apply._resize(apply._pixel_region(small, geo.crop), (40, 40))  # crop edges on whole reduced pixels
    err, err_rounded = float(np.abs(got - expected).max()), float(np.abs(rounded - expected).max())
    # measured (largest difference over the picture's range): 0.006 at 1/2 and 0.025 at 1/4, against 0.055 and 0.11
    # with the crop rounded; what is left is the detail inside a reduced pixel, which no resampling can recover
    assert err < 0.3 * err_rounded and err < 0.04 * float(np.ptp(expected))
    # a full image goes through OpenCV's area resize (rows, then columns: one pass's result to float32 rounding)
    same = Image2D(full, (-1e3, 1e3), src)
    np.testing.assert_allclose(apply._region_resized(same, geo.crop, (40, 40)), expected, rtol=0,
                               atol=1e-6 * float(np.abs(expected).max()))


def test_predict_reduces_jpeg2000_and_keeps_masks_and_areas_on_the_full_grid(tmp_path: Path) -> None:
    _j2k_chest(tmp_path / "in" / "a.dcm")
    model = load_classifier(make_tiny_classifier(tmp_path / "m", size=16), device="cpu")
    seg = str(make_tiny_segmenter(tmp_path / "seg", size=16, seed=6))
    runs = {}
    for reduced in (True, False):
        out = tmp_path / ("reduced" if reduced else "full")
        config = PredictConfig(inputs=(tmp_path / "in",), out_dir=out, workers=0, lungs=True, segmenter=seg,
                               reduced_decode=reduced)
        needs = pixel_needs(config, model, build_hooks(config, model))
        assert (needs is not None) == reduced
        run_predict(config, model=model)
        (row,) = read_jsonl(out / "results.jsonl")
        mask = cv2.imread(str(out / row["mask_path"]), cv2.IMREAD_UNCHANGED)
        runs[reduced] = (row, mask)
    (red, red_mask), (full, full_mask) = runs[True], runs[False]
    assert red["rows"] == full["rows"] == 320 and red["columns"] == full["columns"] == 288
    assert red_mask.shape == full_mask.shape == (320, 288)  # masks at the original size, whatever was decoded
    assert red["lung_area_mm2"] == pytest.approx(red["lung_area_px"] * 0.04)
    # the toy segmenter thresholds the intensities of a gradient, so its boundaries move with the slightly smoother
    # input; the real segmenter's masks agree far better (test_real_chest_masks_and_scores_match_full_decoding)
    assert abs(red["lung_area_px"] - full["lung_area_px"]) <= 0.06 * full["lung_area_px"]
    assert (red_mask == full_mask).mean() > 0.9
    labels = [k for k in red if k.startswith("score_")]
    assert max(abs(red[k] - full[k]) for k in labels) < 0.01
    assert red["reason"] == full["reason"]  # the reading notes do not change
    # each row and run.json say how the image was read
    assert red["decoded_at"] == "1/8" and full["decoded_at"] == "full"
    for reduced, out in ((True, "reduced"), (False, "full")):
        options = json.loads((tmp_path / out / "run.json").read_text())["options"]
        assert options["full_resolution"] is (not reduced) and options["workers"] == 0
        assert "decoded_at" in (tmp_path / out / "results.csv").read_text().splitlines()[0].split(",")


def test_heatmaps_need_the_overlay_resolution_and_a_hook_without_a_size_needs_everything(tmp_path: Path) -> None:
    model = load_classifier(make_tiny_classifier(tmp_path / "m", size=16), device="cpu")
    config = PredictConfig(inputs=(tmp_path,), out_dir=tmp_path / "o", heatmaps=True)
    needs = pixel_needs(config, model, build_hooks(config, model))
    assert needs is not None and needs.min_long_side == OVERLAY_SIDE
    hooks = build_hooks(config, model)
    hooks[0].needs_images, hooks[0].image_long_side = True, None  # e.g. an extension that draws at full size
    assert pixel_needs(config, model, hooks) is None


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("name", ["J2KR", "J2KI", "UNCR"])  # UNCR: uncompressed, decoded in full and block-averaged
def test_real_chest_masks_and_scores_match_full_decoding(shared_data: Path, name: str) -> None:
    from cxrtriage.io.dicom import read_dicom
    from cxrtriage.measure.lungs import lung_area
    from cxrtriage.model import load_segmenter

    path = shared_data / "dicom" / "cxr_real" / f"nema_wg04_RG1_{name}.dcm"
    seg, clf = load_segmenter(None, device="cpu"), load_classifier(None, device="cpu")
    full = read_dicom(path)
    for model in (seg, clf):
        small = read_dicom(path, max_scale=PixelNeeds((model.manifest.preprocessing,)))
        assert small.scale == (2 if model is seg else 4) and small.shape == full.shape
        if model is seg:
            a, b = seg.segment(full), seg.segment(small)
            assert a.labels.shape == b.labels.shape == full.shape
            inter = np.count_nonzero((a.labels > 0) & (b.labels > 0))
            assert 2 * inter / (np.count_nonzero(a.labels) + np.count_nonzero(b.labels)) > 0.99  # measured 0.998x
            assert lung_area(b).total_px == pytest.approx(lung_area(a).total_px, rel=0.01)
        else:
            sa, sb = clf.predict(full), clf.predict(small)
            # measured 0.0017 (J2KR), 0.0018 (J2KI) and 0.0033 (UNCR); 0.0081 with crop edges rounded to whole
            # reduced pixels
            assert max(abs(sa[k] - sb[k]) for k in sa) < 0.005


@pytest.mark.data
@pytest.mark.slow
@pytest.mark.parametrize("lossy", [False, True], ids=["HTJ2K lossless", "HTJ2K lossy"])
def test_real_chest_as_htj2k_matches_full_decoding(shared_data: Path, tmp_path: Path, lossy: bool) -> None:
    """The RG1 chest encoded here as High-Throughput JPEG 2000 (no HTJ2K radiograph is in the shared corpus)."""
    import imagecodecs
    import pydicom
    from factories import save_encapsulated

    from cxrtriage.io.dicom import read_dicom
    from cxrtriage.model import load_segmenter

    source = shared_data / "dicom" / "cxr_real" / "nema_wg04_RG1_UNCR.dcm"
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array
    stream = (imagecodecs.htj2k_encode(pixels, level=0.002, reversible=False) if lossy  # ~9:1
              else imagecodecs.htj2k_encode(pixels))
    path = save_encapsulated(ds, stream, pydicom.uid.HTJ2K if lossy else pydicom.uid.HTJ2KLossless,
                             tmp_path / "rg1_htj2k.dcm")
    full = read_dicom(path)
    assert np.array_equal(full.pixels, read_dicom(source).pixels) != lossy
    seg, clf = load_segmenter(None, device="cpu"), load_classifier(None, device="cpu")
    small = read_dicom(path, max_scale=PixelNeeds((clf.manifest.preprocessing,)))
    assert small.scale == 4
    sa, sb = clf.predict(full), clf.predict(small)
    assert max(abs(sa[k] - sb[k]) for k in sa) < 0.005  # measured 0.0017 (lossless), 0.0019 (lossy)
    a, b = seg.segment(full), seg.segment(read_dicom(path, max_scale=PixelNeeds((seg.manifest.preprocessing,))))
    inter = np.count_nonzero((a.labels > 0) & (b.labels > 0))
    assert 2 * inter / (np.count_nonzero(a.labels) + np.count_nonzero(b.labels)) > 0.99  # measured 0.9999
