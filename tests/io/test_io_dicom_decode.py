"""Which decoder read a DICOM file's pixels is named: each pydicom plugin is tried in turn, and the one that decoded
the file (or that it took a later one) is said in the facts `inspect` shows and in the file's notes. An 8-bit grey
DCT JPEG is decoded by OpenCV first (the same samples as GDCM's, ~5x faster), the others by the plugins."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from factories import make_cxr_dataset, save_encapsulated
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID, JPEGBaseline8Bit, RLELossless

import cxrtriage.io.dicom.decode as dicom_decode
from cxrtriage.errors import InputError
from cxrtriage.io.dicom import read_dicom_detailed
from cxrtriage.io.dicom.decode import decode, plugin_label

PLUGIN_LABELS = {"pydicom (GDCM)", "pydicom (pylibjpeg-libjpeg)", "pydicom (Pillow)"}


def textured(rows: int = 64, cols: int = 48) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    return ((x * 5 + y * 3) % 256).astype(np.uint8)


def jpeg_stream() -> bytes:
    ok, buf = cv2.imencode(".jpg", textured(), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return bytes(buf.tobytes())


def jpeg_file(path: Path) -> Path:
    ds = make_cxr_dataset(64, 48, pixels=textured(), bits_stored=8)
    return save_encapsulated(ds, jpeg_stream(), JPEGBaseline8Bit, path)


def _decoded(path: Path) -> tuple[np.ndarray, str, list[str]]:
    ds = pydicom.dcmread(path)
    return decode(ds, path, str(ds.file_meta.TransferSyntaxUID))


def test_the_plugin_that_decoded_a_jpeg_is_named(tmp_path: Path) -> None:
    arr, decoder, notes = _decoded(jpeg_file(tmp_path / "j.dcm"))
    first = dicom_decode._plugins(JPEGBaseline8Bit)[0]
    assert decoder == f"pydicom ({plugin_label(first, JPEGBaseline8Bit)})"
    assert decoder in PLUGIN_LABELS
    by_opencv = cv2.imdecode(np.frombuffer(jpeg_stream(), np.uint8), cv2.IMREAD_GRAYSCALE)
    assert np.abs(arr.astype(int) - by_opencv).max() <= 2  # the stream's image (IDCT rounding differs by library)
    assert not any("could not" in n for n in notes)


def test_an_8_bit_grey_jpeg_is_read_in_full_by_opencv_with_the_plugins_samples(tmp_path: Path) -> None:
    path = jpeg_file(tmp_path / "j.dcm")
    img, facts = read_dicom_detailed(path)
    assert facts.decoder.startswith("OpenCV ") and facts.decoder.endswith("(libjpeg, full resolution)")
    assert img.scale == 1 and img.pixels.shape == (64, 48)
    by_gdcm, decoder, _ = _decoded(path)
    if decoder == "pydicom (GDCM)":  # GDCM's IDCT, like libjpeg-turbo's, is the exact integer one
        np.testing.assert_array_equal(img.pixels, by_gdcm.astype(np.float32))
    else:
        assert np.abs(img.pixels - by_gdcm).max() <= 2


def test_rle_is_decoded_by_a_named_plugin(tmp_path: Path) -> None:
    px = (np.arange(32 * 32).reshape(32, 32) * 7 % 4096).astype(np.uint16)
    ds = make_cxr_dataset(32, 32, pixels=px, bits_stored=12)
    ds.compress(RLELossless, encoding_plugin="pydicom")
    ds.save_as(tmp_path / "r.dcm", enforce_file_format=True)
    img, facts = read_dicom_detailed(tmp_path / "r.dcm")
    assert facts.decoder in {"pydicom (pylibjpeg-rle)", "pydicom (its own RLE decoder)"}
    np.testing.assert_array_equal(img.pixels, px)


def test_a_plugin_that_fails_hands_on_to_the_next_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = jpeg_file(tmp_path / "j.dcm")
    working = dicom_decode._plugins(JPEGBaseline8Bit)[-1]
    monkeypatch.setattr(dicom_decode, "_plugins", lambda ts: ("nosuch", working))
    _, decoder, notes = _decoded(path)
    label = plugin_label(working, JPEGBaseline8Bit)
    assert decoder == f"pydicom ({label})"
    assert any(n.startswith(f"decoded by {label} after nosuch could not (") for n in notes), notes


def test_when_every_plugin_fails_each_is_named_in_the_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = jpeg_file(tmp_path / "j.dcm")
    monkeypatch.setattr(dicom_decode, "_plugins", lambda ts: ("nosuch", "nothing"))

    def no_gdcm(ds: object, p: Path) -> np.ndarray:
        raise RuntimeError("GDCM is not here")

    monkeypatch.setattr(dicom_decode, "_decode_gdcm", no_gdcm)
    with pytest.raises(InputError) as err:
        _decoded(path)
    text = str(err.value)
    assert str(path) in text and "nosuch: " in text and "nothing: " in text and "gdcm: GDCM is not here" in text
    assert "Re-export the image" in text


def test_jpeg_2000_asks_openjpeg_first() -> None:
    for ts in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"):
        if "pylibjpeg" in get_decoder(UID(ts)).available_plugins:
            assert dicom_decode._plugins(ts)[0] == "pylibjpeg"


def test_plugins_keep_pydicoms_order_otherwise() -> None:
    """pydicom 3 tries GDCM before pylibjpeg for the JPEG family and pylibjpeg before its own RLE decoder."""
    order = dicom_decode._plugins(JPEGBaseline8Bit)
    assert set(order) == set(get_decoder(JPEGBaseline8Bit).available_plugins)
    if {"gdcm", "pylibjpeg"} <= set(order):
        assert order.index("gdcm") < order.index("pylibjpeg")
    rle = dicom_decode._plugins(RLELossless)
    if {"pylibjpeg", "pydicom"} <= set(rle):
        assert rle.index("pylibjpeg") < rle.index("pydicom")
    assert dicom_decode._plugins("1.2.840.10008.1.2.2") == ()  # big endian: pydicom decodes it itself


def test_plugin_labels_name_the_library() -> None:
    assert plugin_label("pylibjpeg", "1.2.840.10008.1.2.4.90") == "pylibjpeg-openjpeg"
    assert plugin_label("pylibjpeg", "1.2.840.10008.1.2.4.201") == "pylibjpeg-openjpeg"
    assert plugin_label("pylibjpeg", RLELossless) == "pylibjpeg-rle"
    assert plugin_label("pylibjpeg", JPEGBaseline8Bit) == "pylibjpeg-libjpeg"
    assert plugin_label("gdcm", JPEGBaseline8Bit) == "GDCM"
    assert plugin_label("", "1.2.840.10008.1.2.2") == "pydicom"


def test_libjpeg_damage_reports_survive_the_full_opencv_read(tmp_path: Path) -> None:
    from hostile import jpeg_damaged

    img, facts = read_dicom_detailed(jpeg_damaged(tmp_path / "zeroed.dcm", "zeroed"))
    assert facts.decoder.startswith("OpenCV ")
    assert any(n.startswith("libjpeg reported while decoding: Corrupt JPEG data") for n in img.notes), img.notes
