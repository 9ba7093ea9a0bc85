"""The area resize: sparse per-axis weights equal to OpenCV's INTER_AREA, and exact footprints on reduced pixels."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cxrtriage.preprocess import apply
from cxrtriage.preprocess.apply import _footprint_weights, area_weights, plan_geometry
from cxrtriage.preprocess.recipe import GeometryMode, PreprocessRecipe
from cxrtriage.types import Image2D, InputKind, SourceRef


@pytest.mark.parametrize(("shape", "out"), [((393, 369), (40, 37)), ((1955, 1841), (224, 211)), ((400, 300), (100, 75)),
                                            ((50, 80), (50, 20)), ((7, 5), (3, 2))])
def test_shrinking_equals_opencvs_inter_area(shape: tuple[int, int], out: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    arr = (rng.random(shape, dtype=np.float32) * 4095).astype(np.float32)
    ref = cv2.resize(arr, (out[1], out[0]), interpolation=cv2.INTER_AREA)
    got = apply._resize(arr, out)
    assert got.dtype == np.float32 and got.shape == out and got.flags.c_contiguous
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * float(np.abs(ref).max()))


def test_weights_are_the_shares_of_each_footprint() -> None:
    w = area_weights(np.array([0.5, 2.0, 3.0, 3.25]), 4).toarray()
    np.testing.assert_allclose(w, [[1 / 3, 2 / 3, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-7)
    # a footprint that ends inside the last pixel counts only what it covers; every row sums to one
    w = area_weights(np.linspace(0.0, 9.6, 4), 10).toarray()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    assert w[-1, 9] == pytest.approx(0.6 / 3.2)


@pytest.mark.parametrize("scale", [2, 4])
def test_reduced_pixels_are_averaged_over_each_exact_footprint(scale: int) -> None:
    # reference: every reduced pixel spread over the full pixels it stands for, then OpenCV's area average of the crop
    rng = np.random.default_rng(5)
    full_shape = (393, 369)
    rh, rw = -(-full_shape[0] // scale), -(-full_shape[1] // scale)
    small = rng.random((rh, rw), dtype=np.float32) * 100
    spread = np.repeat(np.repeat(small, scale, axis=0), scale, axis=1)[:full_shape[0], :full_shape[1]]
    image = Image2D(small, (0.0, 100.0), SourceRef("x", InputKind.DICOM), full_shape=full_shape, scale=scale)
    geo = plan_geometry(full_shape, PreprocessRecipe(size=40, geometry=GeometryMode.CENTER_CROP))
    y0, x0, ch, cw = geo.crop
    ref = cv2.resize(np.ascontiguousarray(spread[y0:y0 + ch, x0:x0 + cw]), (40, 40), interpolation=cv2.INTER_AREA)
    got = apply._region_resized(image, geo.crop, (40, 40))
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * float(ref.max()))


def test_a_crop_of_a_full_image_averages_only_the_crop() -> None:
    rng = np.random.default_rng(8)
    arr = rng.random((300, 420), dtype=np.float32)
    image = Image2D(arr, (0.0, 1.0), SourceRef("x", InputKind.DICOM))
    crop = (10, 57, 260, 300)
    ref = cv2.resize(np.ascontiguousarray(arr[10:270, 57:357]), (30, 26), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(apply._region_resized(image, crop, (26, 30)), ref, rtol=0, atol=2e-6)


def test_footprint_weights_are_area_weights_of_the_same_edges_and_built_once() -> None:
    # a crop from full pixel 7 over 1000 pixels, 224 outputs, pixels decoded at 1/4 of which the first passed is 1
    got = _footprint_weights(7, 1000, 224, 4, 1, 252)
    want = area_weights(np.linspace(7, 1007, 225) / 4 - 1, 252)
    assert (got != want).nnz == 0 and got.shape == want.shape
    assert _footprint_weights(7, 1000, 224, 4, 1, 252) is got  # the next image of the same geometry reuses it


def test_opencv_area_gives_opencvs_one_pass_result_bit_for_bit() -> None:
    # the training recipes' resize: the shipped models were trained on exactly these inputs (see to_model_input)
    rng = np.random.default_rng(11)
    arr = (rng.random((393, 369), dtype=np.float32) * 4095).astype(np.float32)
    image = Image2D(arr, (0.0, 4095.0), SourceRef("x", InputKind.DICOM))
    recipe = PreprocessRecipe(size=40, geometry=GeometryMode.CENTER_CROP)
    geo = plan_geometry(arr.shape, recipe)
    y0, x0, ch, cw = geo.crop
    ref = cv2.resize(arr[y0:y0 + ch, x0:x0 + cw], (40, 40), interpolation=cv2.INTER_AREA)
    exact = apply._region_resized(image, geo.crop, (40, 40), opencv_area=True)
    assert np.array_equal(exact, ref)
    fast = apply._region_resized(image, geo.crop, (40, 40))
    assert not np.array_equal(fast, ref)  # the default differs in the last bits (so this test can tell them apart)
    np.testing.assert_allclose(fast, ref, rtol=0, atol=2e-6 * float(ref.max()))
    whole = apply.to_model_input(image, recipe, opencv_area=True).array
    assert whole.shape == (1, 40, 40) and not np.array_equal(whole, apply.to_model_input(image, recipe).array)


def test_opencv_area_leaves_reduced_pixels_to_the_exact_footprints() -> None:
    small = np.random.default_rng(2).random((99, 93), dtype=np.float32)
    image = Image2D(small, (0.0, 1.0), SourceRef("x", InputKind.DICOM), full_shape=(393, 369), scale=4)
    geo = plan_geometry((393, 369), PreprocessRecipe(size=40))
    assert np.array_equal(apply._region_resized(image, geo.crop, geo.placed[2:], opencv_area=True),
                          apply._region_resized(image, geo.crop, geo.placed[2:]))
