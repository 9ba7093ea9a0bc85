"""Lung-cropped classifier input (experiment, issue 15): the segmenter's lung bounding box plus a margin, per image.

The boxes are computed once per (segmenter, margin, data) and cached as JSON outside the repository (``/tmp`` by
default, like the preprocessed arrays). A crop is applied to the decoded image *before* the model's own
``PreprocessRecipe``, so the classifier still sees exactly ``to_model_input`` of (the crop of) the image.
Inference paths (`predict`, Grad-CAM, reports) do not apply this step yet: a model trained with it is for measurement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cxrtriage.errors import ConfigError
from cxrtriage.files import atomic_write
from cxrtriage.io.raster import read_raster
from cxrtriage.model import load_segmenter
from cxrtriage.model.manifest import sha256_file
from cxrtriage.types import Image2D

log = logging.getLogger(__name__)

Box = tuple[int, int, int, int]  # (y0, x0, h, w) in full-image pixels, like Geometry.crop

# A mask smaller than this share of the image (or a box narrower/shorter than MIN_SIDE_SHARE of it) is a failed
# segmentation, not a lung field: the image is then used whole rather than cropped onto a fragment.
MIN_AREA_SHARE = 0.02
MIN_SIDE_SHARE = 0.2


@dataclass(frozen=True, slots=True)
class LungCrop:
    """Which segmenter finds the lungs and how much margin (share of the box's height/width per side) is added."""

    segmenter: str
    margin: float = 0.1

    def __post_init__(self) -> None:
        if not Path(self.segmenter_onnx()).is_file():
            raise ConfigError(f"--lung-crop {self.segmenter}: no segmenter ONNX file there; pass a segmenter model folder "
                              "(e.g. models/lung-segmenter) or its model.onnx")

    def key(self) -> str:
        return f"{sha256_file(Path(self.segmenter_onnx()))[:16]}_m{self.margin:g}"

    def segmenter_onnx(self) -> str:
        p = Path(self.segmenter)
        return str(p / "model.onnx") if p.is_dir() else str(p)


def lung_box(mask: np.ndarray, margin: float) -> Box | None:
    """Bounding box of every lung pixel of a full-size label map, widened by ``margin`` per side and clipped.

    None when the mask is too small to be a lung field (see MIN_AREA_SHARE, MIN_SIDE_SHARE).
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(ys) < MIN_AREA_SHARE * h * w:
        return None
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    if (y1 - y0) < MIN_SIDE_SHARE * h or (x1 - x0) < MIN_SIDE_SHARE * w:
        return None
    dy, dx = round(margin * (y1 - y0)), round(margin * (x1 - x0))
    y0, y1, x0, x1 = max(0, y0 - dy), min(h, y1 + dy), max(0, x0 - dx), min(w, x1 + dx)
    return (y0, x0, y1 - y0, x1 - x0)


def crop_image(image: Image2D, box: Box | None) -> Image2D:
    """``image`` cut to ``box`` (full-resolution pixels only); None keeps the whole image."""
    if box is None:
        return image
    if image.scale != 1:
        raise ValueError(f"crop_image needs full-resolution pixels, got scale {image.scale} ({image.source.path})")
    y0, x0, bh, bw = box
    return replace(image, pixels=np.ascontiguousarray(image.pixels[y0 : y0 + bh, x0 : x0 + bw]))


def lung_boxes(data_root: Path, paths: Sequence[str], crop: LungCrop, *, cache_dir: Path | None = None,
               batch: int = 32) -> dict[str, Box | None]:
    """The lung box of every image (relative ``paths`` under ``data_root``), cached as JSON; None = use it whole."""
    cache_dir = Path(cache_dir or os.environ.get("CXRTRIAGE_TRAIN_CACHE", "/tmp/cxrtriage_train_cache"))
    digest = hashlib.sha256((json.dumps(list(paths)) + str(data_root.resolve())).encode()).hexdigest()[:16]
    cache = cache_dir / f"lungboxes_{crop.key()}_{digest}.json"
    if cache.is_file():
        log.info("lung boxes: cache hit %s", cache)
        raw = json.loads(cache.read_text())
        return {p: (tuple(raw[p]) if raw[p] is not None else None) for p in paths}
    seg = load_segmenter(crop.segmenter, option="--lung-crop")
    out: dict[str, Box | None] = {}
    for i in range(0, len(paths), batch):
        chunk = list(paths[i : i + batch])
        images = [read_raster(data_root / p) for p in chunk]
        masks = seg.segment_inputs([seg.preprocess(im) for im in images], [im.source for im in images],
                                   [im.pixel_spacing_mm for im in images])
        for p, m in zip(chunk, masks, strict=True):
            out[p] = lung_box(m.binary(), crop.margin)
        if (i // batch) % 20 == 0:
            log.info("lung boxes: %d/%d images", min(i + batch, len(paths)), len(paths))
    n_none = sum(b is None for b in out.values())
    log.info("lung boxes: %d images, %d without a usable lung mask (used whole)", len(out), n_none)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, json.dumps({p: (list(b) if b is not None else None) for p, b in out.items()}))
    return out
