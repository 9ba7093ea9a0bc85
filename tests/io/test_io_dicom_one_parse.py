"""A DICOM file is parsed once: the pixel data read from where the header scan found them gives what a full parse gives."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from factories import make_cxr_dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from cxrtriage.errors import InputError
from cxrtriage.io.dicom import read_dicom_detailed
from cxrtriage.io.dicom import reader as reader_module
from cxrtriage.io.dicom.header import DicomHeader, read_header

PYDICOM_TEST_FILES = Path(os.path.dirname(pydicom.data.__file__)) / "test_files"


def _outcome(path: Path, header: DicomHeader) -> tuple[object, ...]:
    """Everything the reader gives for ``path`` (or the error it raises)."""
    try:
        image, facts = read_dicom_detailed(path, header=header)
    except InputError as exc:
        return ("error", str(exc))
    return (image.pixels.dtype, image.pixels.shape, image.pixels.tobytes(), image.value_range, image.voi,
            image.pixel_spacing_mm, image.notes, image.scale, image.full_shape, facts)


def _both_ways(path: Path) -> tuple[tuple[object, ...], tuple[object, ...], bool]:
    """(one parse, two parses, whether the one-parse path was taken) for ``path``."""
    header = read_header(path)
    taken = reader_module._with_pixels(header, path) is not None
    twice = dataclasses.replace(header, pixel=dataclasses.replace(header.pixel, value_span=None))
    return _outcome(path, header), _outcome(path, twice), taken


def _readable(folder: Path) -> list[Path]:
    out = []
    for p in sorted(folder.rglob("*")):
        try:
            read_header(p)
        except (InputError, OSError):
            continue
        out.append(p)
    return out


def test_every_pydicom_test_file_reads_the_same_with_one_parse() -> None:
    files = _readable(PYDICOM_TEST_FILES)
    taken = 0
    for p in files:
        once, twice, fast = _both_ways(p)
        assert once == twice, p.name
        taken += fast
    # the one-parse path is the usual one (native and encapsulated pixel data alike), not a rare exception
    assert len(files) > 50 and taken > len(files) // 2


def test_uncompressed_and_encapsulated_files_made_here(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    words = rng.integers(0, 4096, size=(40, 30), dtype=np.uint16)
    native = make_cxr_dataset(rows=40, cols=30, bits_stored=12)
    native.PixelData = words.tobytes()
    native.add_new(0xFFFCFFFC, "OB", b"\0" * 6)  # Data Set Trailing Padding after the pixels: not needed to read them
    native.save_as(tmp_path / "native.dcm", enforce_file_format=True)
    once, twice, fast = _both_ways(tmp_path / "native.dcm")
    assert fast and once == twice
    assert np.array_equal(read_dicom_detailed(tmp_path / "native.dcm")[0].pixels, words.astype(np.float32))

    header = read_header(tmp_path / "native.dcm")
    ds = reader_module._with_pixels(header, tmp_path / "native.dcm")
    assert ds is not None and "PixelData" in ds and "PixelData" not in header.dataset  # the header is not changed

    src = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small_jp2klossless.dcm")
    assert src.file_meta.TransferSyntaxUID == JPEG2000Lossless
    full = pydicom.dcmread(PYDICOM_TEST_FILES / "MR_small_jp2klossless.dcm", force=True)
    header = read_header(PYDICOM_TEST_FILES / "MR_small_jp2klossless.dcm")
    one = reader_module._with_pixels(header, PYDICOM_TEST_FILES / "MR_small_jp2klossless.dcm")
    assert one is not None and one.PixelData == full.PixelData  # the items, up to the sequence delimiter
    assert one["PixelData"].is_undefined_length


def test_a_file_changed_after_its_header_was_read_is_parsed_again(tmp_path: Path) -> None:
    ds = make_cxr_dataset(rows=40, cols=30, bits_stored=12)
    ds.PixelData = np.zeros((40, 30), np.uint16).tobytes()
    path = tmp_path / "cut.dcm"
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path)
    path.write_bytes(path.read_bytes()[:-100])  # cut short after the probe: the full parse must see and say it
    assert reader_module._with_pixels(header, path) is None
    with pytest.raises(InputError):
        read_dicom_detailed(path, header=header)


def test_encapsulated_fragments_made_here_match(tmp_path: Path) -> None:
    ds = make_cxr_dataset(rows=8, cols=8, bits_stored=8)
    ds.BitsAllocated = 8
    ds.PixelData = encapsulate([b"\xff\xd8" + b"\1" * 30 + b"\xff\xd9", b"\2" * 12])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"
    path = tmp_path / "enc.dcm"
    ds.save_as(path, enforce_file_format=True)
    one = reader_module._with_pixels(read_header(path), path)
    assert one is not None and one.PixelData == pydicom.dcmread(path).PixelData


@pytest.mark.data
def test_every_shared_dicom_file_reads_the_same_with_one_parse(shared_data: Path) -> None:
    files = _readable(shared_data / "dicom")
    assert len(files) >= 30
    taken = 0
    for p in files:
        once, twice, fast = _both_ways(p)
        assert once == twice, p.name
        taken += fast
    assert taken >= 25
