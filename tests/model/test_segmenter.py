"""Tests of the segmenter: label maps at the original geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from factories import make_tiny_segmenter

from cxrtriage.model import Segmenter, load_model
from cxrtriage.preprocess import to_original
from cxrtriage.types import Image2D, InputKind, SourceRef


def test_segment_maps_argmax_back_to_original_size(tmp_path: Path) -> None:
    seg = load_model(make_tiny_segmenter(tmp_path / "s", seed=3))  # seed 3: dark pixels -> right_lung
    assert isinstance(seg, Segmenter)
    yy, xx = np.mgrid[0:50, 0:20]
    img = Image2D(pixels=(xx * 100.0 + yy).astype(np.float32), value_range=(0.0, 2100.0),
                  source=SourceRef(path="a.png", kind=InputKind.RASTER), pixel_spacing_mm=(0.5, 0.5))
    mask = seg.segment(img)
    assert mask.shape == (50, 20) and mask.labels.dtype == np.uint8
    assert mask.label_names == ("background", "right_lung", "left_lung")
    assert mask.pixel_spacing_mm == (0.5, 0.5)
    # Reference: run the graph directly, argmax, map back with nearest neighbour.
    mi = seg.preprocess(img)
    logits = ort.InferenceSession(str(tmp_path / "s" / "model.onnx")).run(["masks"], {"image": mi.array[None]})[0][0]
    ref = to_original(np.argmax(logits, 0).astype(np.float32), mi.geometry, nearest=True).astype(np.uint8)
    np.testing.assert_array_equal(mask.labels, ref)
    assert len(np.unique(mask.labels)) >= 2  # the gradient image gives background and lung
