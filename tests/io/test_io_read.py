"""assess: probe, select and read a file with as few parses as possible, and the same result as reading it alone."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from factories import write_dicom

from cxrtriage.io import assess, probe, read_image
from cxrtriage.io.discover import probe_with_header


def _count_dcmread(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every pydicom.dcmread call as "header" (stop_before_pixels) or "full"."""
    calls: list[str] = []
    real = pydicom.dcmread

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append("header" if kwargs.get("stop_before_pixels") else "full")
        return real(*args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", counting)
    return calls


def test_scored_dicom_costs_one_header_parse_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "a.dcm", rows=16, cols=16, WindowCenter="100", WindowWidth="200")
    calls = _count_dcmread(monkeypatch)
    a = assess(path)
    assert a.selection.status == "scored" and a.image is not None
    assert calls == ["header"]  # the reader reads the pixel data where the probe found them, without a second parse


def test_excluded_dicom_costs_one_header_parse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_dicom(tmp_path / "lat.dcm", rows=16, cols=16, view="LL")
    calls = _count_dcmread(monkeypatch)
    a = assess(path)
    assert a.selection.status == "excluded" and a.image is None
    assert calls == ["header"]


def test_assess_reads_the_same_image_as_read_image(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "m1.dcm", rows=16, cols=12, photometric="MONOCHROME1", RescaleSlope="2",
                       RescaleIntercept="-5", WindowCenter="100", WindowWidth="200", PixelSpacing=["0.2", "0.3"])
    image = assess(path).image
    alone = read_image(path)
    assert image is not None
    np.testing.assert_array_equal(image.pixels, alone.pixels)
    assert (image.value_range, image.voi, image.pixel_spacing_mm, image.dicom, image.notes) == (
        alone.value_range, alone.voi, alone.pixel_spacing_mm, alone.dicom, alone.notes)


def test_probe_with_header_gives_the_probe_and_keeps_the_dataset_out_of_it(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm", rows=8, cols=8)
    pr, header = probe_with_header(path)
    assert pr == probe(path)
    assert header is not None and header.dataset.Rows == 8 and "PixelData" not in header.dataset
    # the probe crosses process boundaries: it must stay small and free of pydicom objects
    assert b"pydicom" not in pickle.dumps(pr)
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert probe_with_header(png)[1] is None
