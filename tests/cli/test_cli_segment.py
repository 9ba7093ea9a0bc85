"""`cxrtriage segment` end to end: mask PNGs at the original size, lung areas in px and mm²."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from factories import make_tiny_segmenter, write_dicom
from typer.testing import CliRunner

from cxrtriage.cli.app import app
from cxrtriage.io import read_image
from cxrtriage.model import Segmenter, load_model


def _gradient(rows: int, cols: int) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return (xx * 4000 // max(cols - 1, 1) + yy % 3).astype(np.uint16)


@pytest.fixture()
def seg(tmp_path: Path) -> Path:
    return make_tiny_segmenter(tmp_path / "seg", seed=3)  # seed 3: dark pixels -> right_lung, bright -> background


def test_segment_end_to_end(tmp_path: Path, seg: Path) -> None:
    scans = tmp_path / "scans"
    write_dicom(scans / "a" / "x.dcm", rows=40, cols=60, pixels=_gradient(40, 60), PixelSpacing=[0.2, 0.3])
    write_dicom(scans / "b" / "x.dcm", rows=30, cols=20, pixels=_gradient(30, 20))
    write_dicom(scans / "b" / "lat.dcm", view="LL")
    cv2.imwrite(str(scans / "p.png"), (_gradient(25, 35) // 16).astype(np.uint8))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["segment", str(scans), "--out", str(out), "--model", str(seg), "--workers", "0"],
                           terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "segmented 3 · excluded 1 · failed 0" in r.output and "scored 3" not in r.output  # as its summary says
    with open(out / "segment.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(row["path"]).name for row in rows] == ["x.dcm", "lat.dcm", "x.dcm", "p.png"]
    by_mask = {row["mask_path"]: row for row in rows if row["status"] == "scored"}
    assert set(by_mask) == {"masks/x.png", "masks/x_2.png", "masks/p.png"}  # duplicate stems disambiguated
    assert next(row for row in rows if row["status"] == "excluded")["mask_path"] == ""

    model = load_model(seg)
    assert isinstance(model, Segmenter)
    for rel, (h, w, spacing) in {"masks/x.png": (40, 60, (0.2, 0.3)), "masks/x_2.png": (30, 20, None),
                                 "masks/p.png": (25, 35, None)}.items():
        row = by_mask[rel]
        mask = cv2.imread(str(out / rel), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (h, w) and mask.dtype == np.uint8  # original size
        expected = model.segment(read_image(row["path"])).labels
        np.testing.assert_array_equal(mask, expected)
        px = int((mask > 0).sum())
        assert 0 < px < h * w  # the gradient gives both lung and background with this model
        assert int(row["lung_area_px"]) == px
        assert int(row["right_lung_px"]) + int(row["left_lung_px"]) == px
        if spacing is None:
            assert row["lung_area_mm2"] == "" and row["right_lung_mm2"] == ""
        else:
            assert float(row["lung_area_mm2"]) == pytest.approx(px * spacing[0] * spacing[1], rel=1e-5)
            assert float(row["right_lung_mm2"]) == pytest.approx(int(row["right_lung_px"]) * 0.06, rel=1e-5)


def test_segment_needs_a_segmenter(tmp_path: Path) -> None:
    from factories import make_tiny_classifier

    write_dicom(tmp_path / "in" / "a.dcm")
    clf = make_tiny_classifier(tmp_path / "clf")
    r = CliRunner().invoke(app, ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(clf)])
    assert r.exit_code == 3 and "is a classification model, but a segmentation model is needed" in r.output


def test_segment_default_model_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXRTRIAGE_MODELS_DIR", str(tmp_path / "none"))
    write_dicom(tmp_path / "in" / "a.dcm")
    r = CliRunner().invoke(app, ["segment", str(tmp_path / "in"), "-o", str(tmp_path / "out")])
    assert r.exit_code == 3 and "model 'lung-segmenter' not found" in r.output
