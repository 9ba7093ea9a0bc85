"""Overlay rendering, raw-map files and lung-mask gating."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_tiny_classifier

from cxrtriage.errors import OutputError
from cxrtriage.explain import explain
from cxrtriage.explain.base import Heatmap
from cxrtriage.explain.gating import gate_heatmap
from cxrtriage.explain.overlay import display_grey, overlay_text, render_overlay, save_heatmap
from cxrtriage.model import Classifier, LungMask, load_model
from cxrtriage.types import Image2D, InputKind, SourceRef


def _image(h: int, w: int, seed: int = 0) -> Image2D:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    px = (1000 + 800 * np.sin(yy / 17.0) * np.cos(xx / 23.0) + rng.normal(0, 50, (h, w))).astype(np.float32)
    return Image2D(pixels=px, value_range=(0.0, 4095.0), source=SourceRef("synthetic.dcm", InputKind.DICOM))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Classifier:
    clf = load_model(make_tiny_classifier(tmp_path_factory.mktemp("tiny") / "m", size=32).parent)
    assert isinstance(clf, Classifier)
    return clf


def _first_map(clf: Classifier, img: Image2D) -> Heatmap:
    for lab in clf.labels:
        hm = explain(clf, img, lab, method="layercam")
        if not hm.empty:
            return hm
    raise AssertionError("no label of the tiny model gives a map")


def test_overlay_keeps_the_original_geometry_and_leaves_cool_pixels_grey(tiny: Classifier) -> None:
    img = _image(200, 300)
    hm = _first_map(tiny, img)
    rgb = render_overlay(img, hm, overlay_text(tiny.manifest, hm), floor=0.2)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    # locate the left panel (the plain radiograph) by matching its first row
    grey = np.clip(np.rint(display_grey(img.pixels) * 255), 0, 255).astype(np.uint8)
    top = next(y for y in range(rgb.shape[0]) if np.array_equal(rgb[y, :300, 0], grey[0]))
    left = rgb[top : top + 200, :300]
    assert np.array_equal(left[:, :, 0], grey) and np.array_equal(left[:, :, 1], grey)
    assert hm.original is not None
    cool = hm.original < 0.2
    hot = hm.original > 0.5
    assert cool.any() and hot.any()
    # the right panel starts a small gap after the left one; below the floor it is the untouched radiograph
    x0 = next((x for x in range(300, 340) if np.array_equal(rgb[top : top + 200, x : x + 300, 0][cool], grey[cool])), None)
    assert x0 is not None, "right panel not found or its cool pixels were coloured"
    right = rgb[top : top + 200, x0 : x0 + 300].astype(int)
    assert np.mean(np.abs(right[hot] - grey[hot][:, None].astype(int))) > 20  # coloured where hot


def test_large_images_are_downscaled_for_the_png_only(tiny: Classifier, tmp_path: Path) -> None:
    img = _image(2400, 1800)
    hm = _first_map(tiny, img)
    png, npy = save_heatmap(tmp_path / "a__x__layercam.png", img, hm, overlay_text(tiny.manifest, hm), max_side=600)
    out = cv2.imread(str(png))
    assert out is not None and out.shape[0] < 900  # the 2400-row radiograph was drawn 600 rows high
    assert npy is not None
    raw = np.load(npy)
    assert raw.shape == (2400, 1800) and raw.dtype == np.float32  # the raw map keeps the original size
    np.testing.assert_array_equal(raw, hm.original)


def test_compact_raw_maps_are_float16_at_the_png_scale(tiny: Classifier, tmp_path: Path) -> None:
    img = _image(2400, 1800)
    hm = _first_map(tiny, img)
    _, npy = save_heatmap(tmp_path / "a__x__layercam.png", img, hm, overlay_text(tiny.manifest, hm), max_side=600,
                          compact_npy=True)
    assert npy is not None
    raw = np.load(npy)
    assert raw.shape == (600, 450) and raw.dtype == np.float16  # aspect ratio kept
    assert hm.original is not None
    ref = cv2.resize(hm.original, (450, 600), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(raw.astype(np.float32), ref, atol=2e-3)


def test_no_map_is_never_drawn(tiny: Classifier) -> None:
    img = _image(64, 64)
    hm = _first_map(tiny, img)
    empty = Heatmap(label=hm.label, method=hm.method, values=None, geometry=hm.geometry,
                    reason="no positive evidence")
    with pytest.raises(OutputError, match="no positive evidence"):
        render_overlay(img, empty, overlay_text(tiny.manifest, empty))


def test_overlay_text_names_threshold_operating_point_model_and_disclaimer(tiny: Classifier) -> None:
    hm = _first_map(tiny, _image(64, 64))
    text = overlay_text(tiny.manifest, hm, operating_point="rule_out")
    lines = " ".join(text.lines())
    assert "threshold 0.200 at the rule-out (high-sensitivity) operating point" in lines
    assert "tiny-classifier 0.0.1-test" in lines and "LayerCAM" in lines
    assert f"calibrated score {hm.score:.3f}" in lines


def _mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> LungMask:
    labels = np.zeros(shape, np.uint8)
    y0, x0, y1, x1 = box
    labels[y0:y1, x0:x1] = 1
    return LungMask(labels=labels, label_names=("background", "right_lung", "left_lung"),
                    source=SourceRef("m", InputKind.RASTER))


def test_lung_mask_gating_hides_evidence_outside_the_dilated_mask(tiny: Classifier) -> None:
    img = _image(200, 300)
    hm = _first_map(tiny, img)
    gated = gate_heatmap(hm, _mask((200, 300), (50, 60, 150, 240)), dilate_fraction=0.02)
    assert gated.original is not None and hm.original is not None
    r = round(0.02 * 300)
    inside = np.zeros((200, 300), bool)
    inside[50 - r : 150 + r, 60 - r : 240 + r] = True
    assert float(gated.original[~inside].max()) == 0.0
    core = np.zeros_like(inside)
    core[50:150, 60:240] = True
    np.testing.assert_array_equal(gated.original[core], hm.original[core])  # not rescaled
    assert any("lung mask" in n for n in gated.notes)
    nothing = gate_heatmap(hm, _mask((200, 300), (0, 0, 0, 0)))
    assert nothing.empty and "outside the (dilated) lung mask" in nothing.reason


def test_write_overlays_names_files_and_skips_no_map(tiny: Classifier, tmp_path: Path) -> None:
    from cxrtriage.explain.overlay import write_overlays

    img = _image(80, 120)
    hm = _first_map(tiny, img)
    empty = Heatmap(label="effusion", method="gradcam", values=None, geometry=hm.geometry, reason="no positive evidence")
    written = write_overlays(tmp_path, "pat 1/img", img, [hm, empty], tiny.manifest)
    assert [p.name for p in written] == [f"pat_1_img__{hm.label}__layercam.png"]
    assert written[0].is_file() and written[0].with_suffix(".npy").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([written[0].name, written[0].with_suffix(".npy").name])


def test_on_a_small_image_every_line_wraps_inside_the_picture(tiny: Classifier) -> None:
    """A 224 px Kermany chest gave a ~530 px canvas, and the ends of the lines ("(Youden) operating point", "POSSIBLE
    SHORTCUT", "does not move the priority") fell off it."""
    import dataclasses

    from cxrtriage.explain.overlay import _font, _wrap

    img = _image(96, 80)
    hm = _first_map(tiny, img)
    text = overlay_text(tiny.manifest, hm)
    notes = ("64% of the evidence lies outside the lung fields (lungs + mediastinum): POSSIBLE SHORTCUT (level 50%)",
             "reported only: not validated for the pediatric population, so it does not move the priority")
    text = dataclasses.replace(text, notes=notes)
    rgb = render_overlay(img, hm, text, floor=0.2)
    band = rgb[: rgb.shape[0] - 96 - 20]  # above the panels
    assert band.max() > 100 and band[:, -3:].max() < 40  # text drawn, none of it against the right edge
    font = _font(14)
    for line in [*text.lines(), "Decision support only - not a diagnosis", "a-very-long-token-" * 6]:
        parts = _wrap(line, font, 150)
        assert all(font.getlength(p) <= 150 for p in parts), parts
        assert "".join(parts).replace(" ", "") == line.replace(" ", "")  # nothing lost
