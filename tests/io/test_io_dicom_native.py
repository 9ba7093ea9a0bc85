"""Uncompressed 16-bit little-endian pixel data read straight from the bytes: the same array pydicom makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from factories import make_cxr_dataset
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from cxrtriage.io.dicom import read_dicom_detailed
from cxrtriage.io.dicom.decode import native_words


def _dataset(bits_stored: int, signed: bool, rows: int = 37, cols: int = 29, garbage: bool = True) -> pydicom.Dataset:
    """A 16-bit image whose bits above BitsStored hold random garbage (as some modalities write overlays there)."""
    rng = np.random.default_rng(bits_stored + 100 * signed)
    words = rng.integers(0, 1 << 16, size=(rows, cols), dtype=np.uint32).astype(np.uint16)
    if not garbage:
        words &= np.uint16((1 << bits_stored) - 1) if bits_stored < 16 else np.uint16(0xFFFF)
    ds = make_cxr_dataset(rows=rows, cols=cols, bits_stored=bits_stored)
    ds.PixelData = words.tobytes()
    ds.PixelRepresentation = int(signed)
    return ds


@pytest.mark.parametrize("bits_stored", [10, 12, 15, 16])
@pytest.mark.parametrize("signed", [False, True])
def test_native_words_equal_pydicoms_pixel_array(bits_stored: int, signed: bool) -> None:
    ds = _dataset(bits_stored, signed)
    ours = native_words(ds, str(ds.file_meta.TransferSyntaxUID))
    assert ours is not None
    theirs = ds.pixel_array
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert np.array_equal(ours, theirs)
    assert ours.flags.writeable and ours.dtype.isnative


def test_implicit_vr_little_endian_takes_the_same_path() -> None:
    ds = _dataset(12, False)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ours = native_words(ds, ImplicitVRLittleEndian)
    assert ours is not None and np.array_equal(ours, ds.pixel_array)


@pytest.mark.parametrize("change", ["big_endian", "eight_bit", "high_bit", "frames", "short", "rgb"])
def test_other_layouts_are_left_to_pydicom(change: str) -> None:
    ds = _dataset(12, False)
    ts = str(ds.file_meta.TransferSyntaxUID)
    if change == "big_endian":
        ts = ExplicitVRBigEndian
    elif change == "eight_bit":
        ds.BitsAllocated = 8
    elif change == "high_bit":
        ds.HighBit = 15
    elif change == "frames":
        ds.NumberOfFrames = 2
    elif change == "short":
        ds.PixelData = ds.PixelData[:-2]
    elif change == "rgb":
        ds.SamplesPerPixel = 3
    assert native_words(ds, ts) is None


def test_a_file_read_through_the_fast_path_is_the_image_pydicom_gives(tmp_path: Path) -> None:
    ds = _dataset(12, False, rows=64, cols=48)
    path = tmp_path / "native.dcm"
    ds.save_as(path, enforce_file_format=True)
    image, facts = read_dicom_detailed(path)
    assert facts.decoder == "numpy (uncompressed 16-bit little endian)"
    expected = (pydicom.dcmread(path).pixel_array.astype(np.float32))
    assert np.array_equal(image.pixels, expected)
