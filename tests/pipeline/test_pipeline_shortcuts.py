"""``predict --heatmaps`` on real radiographs: ungated maps, the share of evidence outside the lungs, the shortcut note
in the results row, the overlay, the report and the secondary capture's legend; ``--heatmap-gate`` still gates."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import read_jsonl

from cxrtriage.explain.gating import dilated_mask, lung_fields
from cxrtriage.io import read_image
from cxrtriage.model import load_segmenter
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict
from cxrtriage.report.capture import AMBER, legend_lines
from cxrtriage.report.study import load_results

pytestmark = [pytest.mark.data, pytest.mark.slow]

# Looked at by eye (docs/explain.md, "Evidence outside the lungs"): the shipped model's 'effusion' map of this NIH
# adult sits on the upper abdomen below the lungs (97% outside the lung fields); its 'pneumonia' map of this Kermany
# child (the validated finding and population) lies on the lungs (14% outside).
SHORTCUT = "nih14/images/00013091_000.png"
VALIDATED = "kermany224/test/PNEUMONIA/person24_virus_58.jpeg"


@pytest.fixture(scope="module")
def ungated(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ungated")
    run_predict(PredictConfig(inputs=(shared_data / SHORTCUT, shared_data / VALIDATED), out_dir=out, heatmaps=True,
                              workers=0))
    return out


def _on(region: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``region`` (original grid) on the grid of a map saved at ``shape``, nearest neighbour."""
    return cv2.resize(region.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST).astype(bool)


def _rows(out: Path) -> dict[str, dict[str, object]]:
    return {Path(str(r["path"])).name: r for r in read_jsonl(out / "results.jsonl")}


def test_the_row_names_the_shortcut_and_the_validated_finding_is_not_flagged(ungated: Path) -> None:
    rows = _rows(ungated)
    adult, child = rows["00013091_000.png"], rows["person24_virus_58.jpeg"]
    shares = adult["outside_lungs"]
    assert isinstance(shares, dict) and shares["effusion"] >= 0.9
    assert isinstance(adult["shortcut"], str) and "'effusion' 97%" in adult["shortcut"]
    assert set(shares) == {Path(str(p)).stem.split("__")[1] for p in adult["heatmaps"]}  # type: ignore[union-attr]
    child_shares = child["outside_lungs"]
    assert isinstance(child_shares, dict) and child_shares["pneumonia"] < 0.3
    assert "'pneumonia'" not in str(child["shortcut"] or "")
    run = json.loads((ungated / "run.json").read_text())["heatmaps"]
    assert run["lung_gated"] is False
    outside = run["outside_lungs"]
    assert outside["shortcut_level"] == 0.5 and outside["mask_source"] == "segmented for the heat maps"
    assert outside["images_segmented"] == 2 and outside["segmenter"]["name"] == "lung-segmenter"


def test_the_overlay_shows_the_evidence_outside_the_lungs(shared_data: Path, ungated: Path) -> None:
    fields = lung_fields(load_segmenter(device="cpu").segment(read_image(shared_data / SHORTCUT)))
    assert fields is not None
    raw = np.load(ungated / "heatmaps" / "00013091_000__effusion__gradcam.npy").astype(np.float32)
    assert fields.shape == (512, 512) and raw.shape == (224, 224)  # the map is kept at the model's input size
    inside = _on(fields, raw.shape)
    assert float(raw[~inside].max()) > 0.9 and float(raw[inside].max()) < 0.5  # the hottest evidence: outside


def test_gating_stays_available_and_the_report_and_capture_say_possible_shortcut(shared_data: Path, ungated: Path,
                                                                                tmp_path: Path) -> None:
    out = tmp_path / "gated"
    run_predict(PredictConfig(inputs=(shared_data / SHORTCUT,), out_dir=out, heatmaps=True, heatmap_gate=True,
                              report=True, pdf=False, workers=0))  # --report turns --lungs on: the lungs hook's masks
    (row,) = read_jsonl(out / "results.jsonl")
    before = _rows(ungated)["00013091_000.png"]
    assert row["outside_lungs"] == before["outside_lungs"]  # measured on the ungated map, from the same mask
    assert row["shortcut"] == before["shortcut"]
    run = json.loads((out / "run.json").read_text())["heatmaps"]
    assert run["lung_gated"] is True and run["outside_lungs"]["mask_source"] == "lungs hook (--lungs)"
    mask = load_segmenter(device="cpu").segment(read_image(shared_data / SHORTCUT))
    dilated, _ = dilated_mask(mask)
    raw = np.load(out / "heatmaps" / "00013091_000__abnormal__gradcam.npy").astype(np.float32)
    # the 224 px map was shrunk by area averaging: a pixel wholly outside the gate holds no evidence
    outside = ~cv2.dilate(_on(dilated, raw.shape).astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert float(raw[outside].max(initial=0.0)) == 0.0 < float(raw[~outside].max())
    (html,) = [p for p in (out / "report").glob("*.html") if p.name != "index.html"]
    text = html.read_text()
    assert "possible shortcut: evidence outside the lung fields for" in text
    assert "97% of it outside the lung fields (lungs and mediastinum) - POSSIBLE SHORTCUT" in text
    bundle = load_results(out)
    (img,) = bundle.images
    lines = legend_lines(img, bundle, None, drawn_map=False, mask_values=[], mask_names=())
    amber = [t for t, colour in lines if colour == AMBER]
    assert amber[0].startswith("POSSIBLE SHORTCUT") and "  effusion 97%" in amber
