"""Predict over the real DICOM collection in ../shared/data/dicom with a tiny model: every file gets a sensible row."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import make_tiny_classifier, read_jsonl

from cxrtriage.io import discover
from cxrtriage.model import load_classifier
from cxrtriage.pipeline.config import PredictConfig
from cxrtriage.pipeline.predict import run_predict


@pytest.mark.data
def test_predict_over_shared_dicom_collection(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / "dicom"
    model = load_classifier(make_tiny_classifier(tmp_path / "m"), device="cpu")
    summary = run_predict(PredictConfig(inputs=(root,), out_dir=tmp_path / "out", workers=2, batch_size=4), model=model)
    rows = read_jsonl(tmp_path / "out" / "results.jsonl")
    files = [str(p) for p in discover([root])]
    assert [r["path"] for r in rows] == files  # every file, once, in discovery order
    assert summary.total == len(files) == summary.scored + summary.excluded + summary.failed
    by_name = {Path(r["path"]).name: r for r in rows}
    for r in rows:
        assert r["status"] in ("scored", "excluded", "failed")
        assert r["reason"], r["path"]
        scored = r["status"] == "scored"
        assert (r["score_abnormal"] is not None) == scored, r["path"]
    # the real PA chest CR, in all three encodings (uncompressed, J2K lossless, J2K lossy), is scored
    real = [r for r in rows if "/cxr_real/" in r["path"]]
    assert len(real) == 3 and all(r["status"] == "scored" for r in real)
    assert all((r["rows"], r["columns"], r["view"]) == (1955, 1841, "PA") for r in real)
    assert all(r["pixel_spacing_mm"] is None for r in real)  # PixelSpacing 0\0 means unknown, not zero
    # damaged files fail (with the reason), other modalities / non-images are excluded, nothing else is scored
    for name, r in by_name.items():
        if "truncated" in name or "too_short" in name:
            assert r["status"] == "failed", name
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "reportsi.dcm", "rtdose.dcm", "liver.dcm",
                 "nema_wg04_RG3_J2KR_extremity.dcm"):
        assert by_name[name]["status"] == "excluded", name
    assert {r["path"] for r in rows if r["status"] == "scored"} == {r["path"] for r in real}
