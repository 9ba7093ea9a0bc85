"""The report's figures: each map drawn from its saved values on the source picture, at the size the page shows it
(no shrunk text), else predict's overlay picture as it is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from report_fixtures import make_results

from cxrtriage.report import imaging
from cxrtriage.report.sources import StudySources
from cxrtriage.report.study import ResultsBundle, load_results
from cxrtriage.report.view import image_figures


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> ResultsBundle:
    return load_results(make_results(tmp_path_factory.mktemp("view")))


def _decode(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert img is not None
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _image(bundle: ResultsBundle, tag: str):  # type: ignore[no-untyped-def]
    for study in bundle.studies:
        for img in study.images:
            if any(f"/{tag}__" in str(h.path) for h in img.heatmaps):
                return study, img
    raise AssertionError(tag)


def test_a_map_is_drawn_from_its_values_on_the_source_picture_with_a_bar_and_words_in_the_caption(
        bundle: ResultsBundle) -> None:
    study, img = _image(bundle, "a1")
    figures, problems = image_figures(img, StudySources(study), max_side=120)
    assert problems == ()
    source, first = figures[0], figures[1]  # the primary map (the highest finding above threshold) comes first
    pic = _decode(first.data)
    # aligned with the source figure: the same rows, its columns plus a slim colour bar
    assert (first.height, first.width) == pic.shape[:2]
    assert pic.shape[0] == source.height and source.width < pic.shape[1] <= source.width + 10
    bar = pic[:, -2].astype(int)  # turbo from 1 (dark red, top) to 0 (dark blue, bottom), dimmed below the floor
    assert bar[2, 0] > bar[2, 2] and bar[-3, 2] >= bar[-3, 0]
    assert bar[-3].sum() < 0.5 * bar[pic.shape[0] // 3].sum()
    # the map's colour lies where its values are high: compare with the saved map itself
    values = imaging.read_map(img.heatmaps[0].map_path, (source.height, source.width))
    hue_sat = cv2.cvtColor(pic[:, :source.width], cv2.COLOR_RGB2HSV)[:, :, 1].astype(float)
    assert hue_sat[values > 0.6].mean() > hue_sat[values < 0.1].mean() + 40
    label = img.heatmaps[0].label
    assert f"Explanation map (gradcam) for '{label}', score 0.810 >= threshold 0.500" in first.caption
    assert "Bar at the right: relative evidence" in first.caption


def test_without_saved_values_the_overlay_picture_is_shown_as_it_is(bundle: ResultsBundle) -> None:
    study, img = _image(bundle, "b1")  # written with save_maps=False
    assert all(h.map_path is None for h in img.heatmaps)
    figures, problems = image_figures(img, StudySources(study), max_side=4096)
    assert problems == ()
    overlay = imaging.read_png_rgb(Path(img.heatmaps[0].path))
    shown = [_decode(f.data) for f in figures[1:]]
    assert any(s.shape == overlay.shape and np.abs(s.astype(int) - overlay).mean() < 3 for s in shown)
    assert all("Bar at the right" not in f.caption for f in figures)


def test_a_map_that_cannot_be_read_falls_back_to_the_overlay_and_says_so(bundle: ResultsBundle, tmp_path: Path) -> None:
    study, img = _image(bundle, "a1")
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"not a numpy file")
    hm = img.heatmaps[0]
    img2 = dataclasses.replace(img, heatmaps=(dataclasses.replace(hm, map_path=broken),))
    figures, problems = image_figures(img2, StudySources(study), max_side=4096)
    assert len(figures) == 2 and "Bar at the right" not in figures[1].caption
    assert problems and f"map for {hm.label} drawn by predict instead" in problems[0] and "broken.npy" in problems[0]


def test_a_caption_qualifies_a_finding_reported_only_as_the_overlay_and_the_table_do() -> None:
    from cxrtriage.report.study import Finding, Heatmap
    from cxrtriage.report.view import heatmap_caption

    hm = Heatmap(label="mass", path=Path("m.jpg"), method="gradcam", outside_lungs=0.13)
    only = Finding("mass", 0.604, 0.093, "balanced", decides=False, population="adult")
    text = heatmap_caption(hm, finding=only, colour_bar=True)
    assert ("'mass', score 0.604 >= threshold 0.093 (reported only: not validated for the adult population, it does "
            "not move the priority)") in text
    deciding = Finding("mass", 0.604, 0.093, "balanced", decides=True, population="adult")
    assert "reported only" not in heatmap_caption(hm, finding=deciding)
