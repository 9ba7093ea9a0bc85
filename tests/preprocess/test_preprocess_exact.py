"""The recipe options that reproduce torchxrayvision's preprocessing: its crop, its scaling and scikit-image's resize."""

from __future__ import annotations

import numpy as np
import pytest

from cxrtriage.errors import ConfigError
from cxrtriage.preprocess import (
    GeometryMode,
    IntensityMode,
    PixelNeeds,
    PreprocessRecipe,
    ResizeMode,
    plan_geometry,
    skimage_resize,
    to_model_input,
)
from cxrtriage.types import Image2D, InputKind, SourceRef

XRV = PreprocessRecipe(size=224, geometry=GeometryMode.CENTER_CROP, intensity=IntensityMode.NOMINAL,
                       output_range=(-1024.0, 1024.0), resize=ResizeMode.SKIMAGE)


@pytest.mark.parametrize(("shape", "out"), [((1955, 1841), (224, 224)), ((300, 301), (224, 224)),
                                            ((100, 100), (224, 224)), ((512, 512), (224, 224)), ((97, 61), (40, 30))])
def test_skimage_resize_equals_scikit_image(shape: tuple[int, int], out: tuple[int, int]) -> None:
    transform = pytest.importorskip("skimage.transform")
    a = (np.random.default_rng(0).random(shape, dtype=np.float32) * 2048 - 1024).astype(np.float32)
    # exactly as torchxrayvision's XRayResizer calls it, on a [1, H, W] image
    ref = transform.resize(a[None], (1, *out), mode="constant", preserve_range=True).astype(np.float32)[0]
    np.testing.assert_array_equal(skimage_resize(a, out), ref)


@pytest.mark.parametrize("shape", [(10, 7), (7, 10), (11, 8), (9, 9), (1955, 1841), (1841, 1954)])
def test_center_crop_uses_torchxrayvisions_offsets(shape: tuple[int, int]) -> None:
    h, w = shape
    side = min(h, w)
    # XRayCenterCrop: startx = x // 2 - (crop_size // 2), likewise for y
    assert plan_geometry(shape, XRV).crop == (h // 2 - side // 2, w // 2 - side // 2, side, side)


def test_exact_recipe_scales_before_resizing() -> None:
    rng = np.random.default_rng(1)
    raw = rng.integers(0, 4096, (300, 260)).astype(np.float32)
    image = Image2D(pixels=raw, value_range=(0.0, 4095.0), source=SourceRef(path="mem.png", kind=InputKind.RASTER))
    x = to_model_input(image, XRV).array[0]
    h, w = raw.shape
    crop = raw[h // 2 - 130 : h // 2 - 130 + 260, :]
    want = skimage_resize((2 * (crop / 4095.0) - 1.0) * 1024, (224, 224))
    np.testing.assert_allclose(x, want, atol=2e-3)  # float32 rounding of two scalings of values up to 1024
    assert PixelNeeds((XRV,))((4000, 4000)) == 1.0  # exactness needs every pixel
    assert PixelNeeds((PreprocessRecipe(),))((4000, 4000)) > 1.0


def test_resize_mode_round_trips_and_is_left_out_when_default() -> None:
    assert "resize" not in PreprocessRecipe().to_dict()
    d = XRV.to_dict()
    assert d["resize"] == "skimage" and PreprocessRecipe.from_dict(d) == XRV
    with pytest.raises(ConfigError, match="lanczos"):
        PreprocessRecipe.from_dict({"resize": "lanczos"})

