"""read_dicom(path, dataset=ds): a data set the caller already parsed in full gives the same Image2D as the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from factories import make_cxr_dataset
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from cxrtriage.errors import InputError
from cxrtriage.io.dicom import read_dicom, read_dicom_detailed, read_header
from cxrtriage.types import Image2D


def ramp(rows: int = 16, cols: int = 12, bits: int = 12) -> np.ndarray:
    return (np.arange(rows * cols).reshape(rows, cols) * 37 % (1 << bits)).astype(np.uint16)


def _lut_dataset() -> Dataset:
    ds = make_cxr_dataset(16, 12, pixels=ramp(bits=8), bits_stored=8)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 12]
    item.add_new(0x00283006, "OW", (np.arange(256, dtype="<u2") * 16).tobytes())
    item.ModalityLUTType = "US"
    ds.ModalityLUTSequence = Sequence([item])
    return ds


def _compressed(syntax: str) -> Dataset:
    # 64 x 48: OpenJPEG refuses to encode much smaller images
    ds = make_cxr_dataset(64, 48, pixels=ramp(64, 48), photometric="MONOCHROME1", WindowCenter="900", WindowWidth="400")
    ds.compress(syntax)
    return ds


def _deflated() -> Dataset:
    ds = make_cxr_dataset(16, 12, pixels=ramp(), RescaleSlope="2", RescaleIntercept="1")
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


CASES = {
    "mono1_rescale_window_spacing": lambda: make_cxr_dataset(
        16, 12, pixels=ramp(), photometric="MONOCHROME1", RescaleSlope="0.5", RescaleIntercept="-100",
        WindowCenter=["500", "900"], WindowWidth=["100", "300"], VOILUTFunction="SIGMOID", PixelSpacing=["0.2", "0.3"]),
    "inverse_imager_spacing": lambda: make_cxr_dataset(
        16, 12, pixels=ramp(), PresentationLUTShape="INVERSE", ImagerPixelSpacing=["0.2", "0.25"],
        PresentationIntentType="FOR PROCESSING"),
    "modality_lut_sequence": _lut_dataset,
    "rle": lambda: _compressed(RLELossless),
    "jpeg2000": lambda: _compressed(JPEG2000Lossless),
    "deflated": _deflated,
}


def _same(a: tuple[Image2D, Any], b: tuple[Image2D, Any]) -> None:
    (ia, fa), (ib, fb) = a, b
    np.testing.assert_array_equal(ia.pixels, ib.pixels)
    assert ia.pixels.dtype == ib.pixels.dtype
    for name in ("value_range", "pixel_spacing_mm", "dicom", "notes", "source"):
        assert getattr(ia, name) == getattr(ib, name), name
    va, vb = ia.voi, ib.voi
    assert (va is None) == (vb is None)
    if va is not None and vb is not None:
        lut_a, lut_b = va.lut, vb.lut
        assert dataclasses.replace(va, lut=None) == dataclasses.replace(vb, lut=None)
        assert (lut_a is None and lut_b is None) or np.array_equal(lut_a, lut_b)
    assert dataclasses.asdict(fa) == dataclasses.asdict(fb)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dataset_gives_the_same_image_and_facts_as_the_file(tmp_path: Path, case: str) -> None:
    path = tmp_path / f"{case}.dcm"
    CASES[case]().save_as(path, enforce_file_format=True)
    _same(read_dicom_detailed(path), read_dicom_detailed(path, dataset=pydicom.dcmread(path)))


def test_sample_data_read_from_a_dataset_is_identical(repo_root: Path) -> None:
    for path in sorted((repo_root / "sample_data").glob("*.dcm")):
        ds = pydicom.dcmread(path)
        try:
            expected = read_dicom_detailed(path)
        except InputError as exc:  # the SR sample: the same refusal
            with pytest.raises(InputError) as got:
                read_dicom(path, dataset=ds)
            assert str(got.value) == str(exc)
            continue
        _same(expected, read_dicom_detailed(path, dataset=ds))


def test_dataset_read_parses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.dcm"
    _compressed(RLELossless).save_as(path, enforce_file_format=True)
    ds = pydicom.dcmread(path)

    def no_parse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("dcmread called")

    monkeypatch.setattr(pydicom, "dcmread", no_parse)
    assert read_dicom(path, dataset=ds).shape == (64, 48)


def test_metaless_dataset_gets_the_syntax_it_was_parsed_with(tmp_path: Path) -> None:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, True
    bare = Dataset()
    bare.update(make_cxr_dataset(16, 12, pixels=ramp(), photometric="MONOCHROME1"))
    write_dataset(fp, bare)
    path = tmp_path / "bare"
    path.write_bytes(fp.getvalue())
    _same(read_dicom_detailed(path), read_dicom_detailed(path, dataset=pydicom.dcmread(path, force=True)))


def test_truncated_pixel_data_in_a_dataset_is_refused_as_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t.dcm"
    make_cxr_dataset(32, 32, pixels=ramp(32, 32)).save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError) as from_file:
        read_dicom(path)
    with pytest.raises(InputError) as from_dataset:
        read_dicom(path, dataset=pydicom.dcmread(path, force=True))
    assert "pixel data truncated: the element announces 2048 bytes but the file holds only 1948" in str(from_file.value)
    assert str(from_dataset.value) == str(from_file.value)


def test_truncated_encapsulated_dataset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "rle.dcm"
    _compressed(RLELossless).save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.warns(UserWarning):
        ds = pydicom.dcmread(path, force=True)  # pydicom keeps only the file meta of such a file
    with pytest.raises(InputError, match="truncated file"):
        read_dicom(path, dataset=ds)


def test_header_and_dataset_together_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.dcm"
    make_cxr_dataset(8, 8).save_as(path, enforce_file_format=True)
    with pytest.raises(ValueError, match="not both"):
        read_dicom(path, header=read_header(path), dataset=pydicom.dcmread(path))
